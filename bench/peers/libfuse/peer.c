/*
 * The libfuse3 peer of `devlife bench fs`: a low-level libfuse3 server on
 * libfuse's multi-threaded loop, serving one file, `bench`, as devlife
 * serves a device node of its `bench` driver, without the gate:
 *
 *   open   direct I/O, not seekable, no flush, parallel direct writes
 *          (libfuse 3.15+), as devlife's device nodes; libfuse has no
 *          field for FOPEN_STREAM, which devlife also sets;
 *   read   returns min(size, 4) bytes;
 *   write  takes every byte;
 *   ioctl  XYZ_IOC_COUNT = _IOR('X', 1, u64): increments a counter and
 *          returns it; any other command is ENOTTY.
 *
 * Usage: peer MOUNTPOINT [libfuse options]   (prints "ready MOUNTPOINT")
 *
 * Written for devlife's benchmark; built by `devlife bench fs` with
 * `cc -O2 peer.c $(pkg-config --cflags --libs fuse3)`.
 */
/*
 * API 3.12: the version whose fuse_session_loop_mt takes the
 * fuse_loop_config made by fuse_loop_cfg_create(). Below 3.12 the call
 * binds fuse_session_loop_mt_32, which reads that config as the older
 * struct (max_idle_threads becomes the clone_fd field: 1 idle thread, a
 * thread made and ended for nearly every request), and libfuse 3.17+
 * headers hide fuse_loop_cfg_* altogether.
 */
#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#define XYZ_IOC_COUNT _IOR('X', 1, uint64_t)
#define FILE_INO 2
static const char *const FILE_NAME = "bench";

static atomic_uint_fast64_t count;

static int fill_attr(fuse_ino_t ino, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	st->st_uid = getuid();
	st->st_gid = getgid();
	if (ino == FUSE_ROOT_ID) {
		st->st_mode = S_IFDIR | 0755;
		st->st_nlink = 2;
	} else if (ino == FILE_INO) {
		st->st_mode = S_IFREG | 0600;
		st->st_nlink = 1;
	} else {
		return -1;
	}
	return 0;
}

static void p_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fuse_entry_param e;
	if (parent != FUSE_ROOT_ID || strcmp(name, FILE_NAME) != 0) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	memset(&e, 0, sizeof(e));
	e.ino = FILE_INO;
	e.attr_timeout = 1.0;
	e.entry_timeout = 1.0;
	fill_attr(FILE_INO, &e.attr);
	fuse_reply_entry(req, &e);
}

static void p_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct stat st;
	(void)fi;
	if (fill_attr(ino, &st) != 0)
		fuse_reply_err(req, ENOENT);
	else
		fuse_reply_attr(req, &st, 1.0);
}

static void p_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	char buf[512];
	size_t n = 0;
	struct stat st;
	const char *names[] = { ".", "..", FILE_NAME };
	const fuse_ino_t inos[] = { FUSE_ROOT_ID, FUSE_ROOT_ID, FILE_INO };
	(void)fi;
	if (ino != FUSE_ROOT_ID) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	for (off_t i = off; i < 3; i++) {
		fill_attr(inos[i], &st);
		size_t len = fuse_add_direntry(req, buf + n, sizeof(buf) - n, names[i], &st, i + 1);
		if (n + len > sizeof(buf) || n + len > size)
			break;
		n += len;
	}
	fuse_reply_buf(req, buf, n);
}

static void p_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	if (ino != FILE_INO) {
		fuse_reply_err(req, EISDIR);
		return;
	}
	fi->direct_io = 1;
	fi->nonseekable = 1;
	fi->noflush = 1;
#if FUSE_MAJOR_VERSION > 3 || (FUSE_MAJOR_VERSION == 3 && FUSE_MINOR_VERSION >= 15)
	fi->parallel_direct_writes = 1;
#endif
	fuse_reply_open(req, fi);
}

static void p_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	static const char data[4] = { 'd', 'e', 'v', '\n' };
	(void)ino;
	(void)off;
	(void)fi;
	fuse_reply_buf(req, data, size < 4 ? size : 4);
}

static void p_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	(void)ino;
	(void)buf;
	(void)off;
	(void)fi;
	fuse_reply_write(req, size);
}

static void p_ioctl(fuse_req_t req, fuse_ino_t ino, unsigned int cmd, void *arg, struct fuse_file_info *fi,
		    unsigned flags, const void *in_buf, size_t in_bufsz, size_t out_bufsz)
{
	uint64_t n;
	(void)ino;
	(void)arg;
	(void)fi;
	(void)flags;
	(void)in_buf;
	(void)in_bufsz;
	if (cmd != XYZ_IOC_COUNT) {
		fuse_reply_err(req, ENOTTY);
		return;
	}
	if (out_bufsz < sizeof(n)) {
		fuse_reply_err(req, EFAULT);
		return;
	}
	n = atomic_fetch_add_explicit(&count, 1, memory_order_relaxed) + 1;
	fuse_reply_ioctl(req, 0, &n, sizeof(n));
}

static const struct fuse_lowlevel_ops ops = {
	.lookup = p_lookup,
	.getattr = p_getattr,
	.readdir = p_readdir,
	.open = p_open,
	.read = p_read,
	.write = p_write,
	.ioctl = p_ioctl,
};

int main(int argc, char *argv[])
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct fuse_cmdline_opts opts;
	struct fuse_loop_config *cfg;
	struct fuse_session *se;
	int ret = 1;

	if (fuse_parse_cmdline(&args, &opts) != 0 || opts.mountpoint == NULL) {
		fprintf(stderr, "usage: %s MOUNTPOINT [options]\n", argv[0]);
		return 1;
	}
	se = fuse_session_new(&args, &ops, sizeof(ops), NULL);
	if (se == NULL)
		goto out;
	if (fuse_set_signal_handlers(se) != 0)
		goto out_destroy;
	if (fuse_session_mount(se, opts.mountpoint) != 0)
		goto out_signals;
	printf("ready %s\n", opts.mountpoint);
	fflush(stdout);
	/* libfuse's multi-threaded loop with its defaults, as `fuse_main` runs it,
	 * plus the command line's -o clone_fd and -o max_idle_threads. */
	cfg = fuse_loop_cfg_create();
	fuse_loop_cfg_set_clone_fd(cfg, opts.clone_fd);
	fuse_loop_cfg_set_idle_threads(cfg, opts.max_idle_threads);
	fuse_loop_cfg_set_max_threads(cfg, opts.max_threads);
	ret = fuse_session_loop_mt(se, cfg);
	fuse_loop_cfg_destroy(cfg);
	fuse_session_unmount(se);
out_signals:
	fuse_remove_signal_handlers(se);
out_destroy:
	fuse_session_destroy(se);
out:
	free(opts.mountpoint);
	fuse_opt_free_args(&args);
	return ret ? 1 : 0;
}
