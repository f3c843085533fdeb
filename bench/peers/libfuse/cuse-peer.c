/*
 * The libfuse3 CUSE peer of `devlife bench fs`: a character device served
 * with libfuse's cuse_lowlevel API, as its own example (cuse.c) does:
 * cuse_lowlevel_main() in the foreground, multi-threaded (libfuse's loop),
 * unrestricted ioctls. It behaves as devlife's `bench` device node over
 * CUSE, without the gate:
 *
 *   read   returns min(size, 4) bytes ("dev\n");
 *   write  takes every byte;
 *   ioctl  XYZ_IOC_COUNT = _IOR('X', 1, u64): asks for the argument's
 *          memory (FUSE_IOCTL_RETRY), then increments a counter and
 *          returns it; any other command is ENOTTY.
 *
 * Usage: cuse-peer DEVNAME   (registers /dev/DEVNAME; prints "ready DEVNAME")
 *
 * Written for devlife's benchmark; built by `devlife bench fs` with
 * `cc -O2 cuse-peer.c $(pkg-config --cflags --libs fuse3)`.
 */
#define FUSE_USE_VERSION 31
#include <cuse_lowlevel.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/uio.h>

#define XYZ_IOC_COUNT _IOR('X', 1, uint64_t)

static atomic_uint_fast64_t count;
static const char *devname;

static void c_init_done(void *userdata)
{
	(void)userdata;
	printf("ready %s\n", devname);
	fflush(stdout);
}

static void c_open(fuse_req_t req, struct fuse_file_info *fi)
{
	fi->direct_io = 1;
	fi->nonseekable = 1;
	fuse_reply_open(req, fi);
}

static void c_read(fuse_req_t req, size_t size, off_t off, struct fuse_file_info *fi)
{
	static const char data[] = "dev\n";
	(void)off;
	(void)fi;
	fuse_reply_buf(req, data, size < 4 ? size : 4);
}

static void c_write(fuse_req_t req, const char *buf, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	(void)buf;
	(void)off;
	(void)fi;
	fuse_reply_write(req, size);
}

static void c_ioctl(fuse_req_t req, int cmd, void *arg, struct fuse_file_info *fi,
		    unsigned flags, const void *in_buf, size_t in_bufsz, size_t out_bufsz)
{
	(void)fi;
	(void)flags;
	(void)in_buf;
	(void)in_bufsz;
	if ((unsigned)cmd != XYZ_IOC_COUNT) {
		fuse_reply_err(req, ENOTTY);
		return;
	}
	if (out_bufsz < sizeof(uint64_t)) {
		struct iovec out = { arg, sizeof(uint64_t) };
		fuse_reply_ioctl_retry(req, NULL, 0, &out, 1);
		return;
	}
	uint64_t n = atomic_fetch_add(&count, 1) + 1;
	fuse_reply_ioctl(req, 0, &n, sizeof(n));
}

static const struct cuse_lowlevel_ops ops = {
	.init_done = c_init_done,
	.open = c_open,
	.read = c_read,
	.write = c_write,
	.ioctl = c_ioctl,
};

int main(int argc, char **argv)
{
	char info[256];
	const char *dev_info[] = { info };
	struct cuse_info ci;

	if (argc != 2) {
		fprintf(stderr, "usage: %s DEVNAME\n", argv[0]);
		return 2;
	}
	devname = argv[1];
	snprintf(info, sizeof info, "DEVNAME=%s", devname);
	memset(&ci, 0, sizeof ci);
	ci.dev_info_argc = 1;
	ci.dev_info_argv = dev_info;
	ci.flags = CUSE_UNRESTRICTED_IOCTL;
	/* Foreground; multi-threaded (libfuse's default without -s). */
	char *args[] = { argv[0], "-f", NULL };
	return cuse_lowlevel_main(2, args, &ci, &ops, NULL);
}
