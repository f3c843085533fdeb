/* A C client of an xyz CUSE device, as a program written against the
 * driver's header would be: crates/devlife/tests/cuse.rs compiles and runs
 * it against /dev/xyzN.
 *
 *   client DEV io          write, poll, read, XYZ_IOC_COUNT, XYZ_IOC_FIFO_LEN,
 *                          XYZ_IOC_REVERSE; one "name value" line each
 *   client DEV read-eintr  a SIGINT handler without SA_RESTART, then a
 *                          read that blocks; prints "ready", then the
 *                          read's errno name
 *   client DEV count       XYZ_IOC_COUNT once: "count N" or "count ERRNO"
 *
 * Built for 64 bits and, with `-m32`, for 32 (the tests of 32-bit callers'
 * ioctls, FUSE_IOCTL_COMPAT): the header is the same for both.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#define XYZ_IOC_COUNT _IOR('X', 1, uint64_t)
#define XYZ_IOC_FIFO_LEN 0x5858 /* tty-style: an int * argument */
struct xyz_buf {
	uint64_t addr;
	uint32_t len;
	uint32_t done;
};
#define XYZ_IOC_REVERSE _IOWR('X', 6, struct xyz_buf)

static void on_sigint(int sig) { (void)sig; }

static const char *errname(int e)
{
	switch (e) {
	case EINTR: return "EINTR";
	case ENODEV: return "ENODEV";
	case ENOTCONN: return "ENOTCONN";
	case ECONNABORTED: return "ECONNABORTED";
	case ENOTTY: return "ENOTTY";
	default: return strerror(e);
	}
}

static int io(int fd)
{
	char buf[64];
	uint64_t count = 0;
	int len = -1;
	char text[] = "abcdef";
	struct xyz_buf xb = { (uint64_t)(uintptr_t)text, 6, 0 };
	struct pollfd p = { fd, POLLIN, 0 };

	if (write(fd, "hello", 5) != 5) { perror("write"); return 1; }
	int ready = poll(&p, 1, 10000);
	printf("poll %d %s\n", ready, (p.revents & POLLIN) ? "POLLIN" : "-");
	if (ioctl(fd, XYZ_IOC_FIFO_LEN, &len) < 0) { perror("FIFO_LEN"); return 1; }
	printf("fifo_len %d\n", len);
	ssize_t n = read(fd, buf, sizeof buf);
	if (n < 0) { perror("read"); return 1; }
	printf("read %.*s\n", (int)n, buf);
	if (ioctl(fd, XYZ_IOC_COUNT, &count) < 0) { perror("COUNT"); return 1; }
	printf("count %llu\n", (unsigned long long)count);
	if (ioctl(fd, XYZ_IOC_REVERSE, &xb) < 0) { perror("REVERSE"); return 1; }
	printf("reverse %s %u\n", text, xb.done);
	return 0;
}

static int read_eintr(int fd)
{
	struct sigaction sa;
	char c;

	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_sigint; /* no SA_RESTART: the read must end */
	sigaction(SIGINT, &sa, NULL);
	printf("ready\n");
	fflush(stdout);
	if (read(fd, &c, 1) >= 0) { printf("read returned data\n"); return 1; }
	printf("%s\n", errname(errno));
	return 0;
}

static int count_once(int fd)
{
	uint64_t count = 0;

	if (ioctl(fd, XYZ_IOC_COUNT, &count) < 0) printf("count %s\n", errname(errno));
	else printf("count %llu\n", (unsigned long long)count);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc != 3) { fprintf(stderr, "usage: client DEV io|read-eintr|count\n"); return 2; }
	int fd = open(argv[1], O_RDWR);
	if (fd < 0) { printf("open %s\n", errname(errno)); return 1; }
	if (!strcmp(argv[2], "io")) return io(fd);
	if (!strcmp(argv[2], "read-eintr")) return read_eintr(fd);
	if (!strcmp(argv[2], "count")) return count_once(fd);
	return 2;
}
