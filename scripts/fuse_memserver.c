// SPDX-License-Identifier: GPL-2.0-only
/*
 * The transport limit: a minimal libfuse3 server of one file, "disk", held
 * in RAM as it is -- no compression, no Python.
 *
 * Where it sits: beside zramfs, in the benchmark only.  scripts/bench.py
 * compiles it at run time (pkg-config fuse3), mounts it, attaches its disk
 * with the same losetup flags as a zramfs disk and runs the same fio jobs:
 * what is left between its numbers and kernel zram's is FUSE and the loop
 * device, and what is left between zramfs's and its own is zramfs.
 *
 * Like zramfs's disk it is opened direct_io, answers read, write and
 * fallocate (PUNCH_HOLE|KEEP_SIZE: loop's discard), and asks for the
 * same max_background.  The low-level API, multi-threaded loop.
 *
 *     fuse_memserver MOUNTPOINT SIZE_BYTES     (stays in the foreground)
 */
#define FUSE_USE_VERSION 34
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <linux/falloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define DISK_INO 2
static const char DISK_NAME[] = "disk";

static unsigned char *disk;
static size_t disk_size, page_size;

static void stat_of(fuse_ino_t ino, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	if (ino == FUSE_ROOT_ID) {
		st->st_mode = S_IFDIR | 0755;
		st->st_nlink = 2;
	} else {
		st->st_mode = S_IFREG | 0600;
		st->st_nlink = 1;
		st->st_size = disk_size;
		st->st_blocks = disk_size / 512;
	}
}

static void ms_init(void *userdata, struct fuse_conn_info *conn)
{
	/* zramfs's dev backend asks for 64 (BENCHMARKS.md: QD16 62.8k -> 75.5k). */
	conn->max_background = 64;
	conn->congestion_threshold = 48;
}

static void ms_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fuse_entry_param e;

	if (parent != FUSE_ROOT_ID || strcmp(name, DISK_NAME)) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	memset(&e, 0, sizeof(e));
	e.ino = DISK_INO;
	e.attr_timeout = e.entry_timeout = 3600.0;
	stat_of(DISK_INO, &e.attr);
	fuse_reply_entry(req, &e);
}

static void ms_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct stat st;

	if (ino != FUSE_ROOT_ID && ino != DISK_INO) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	stat_of(ino, &st);
	fuse_reply_attr(req, &st, 3600.0);
}

static void ms_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	if (ino != DISK_INO) {
		fuse_reply_err(req, EISDIR);
		return;
	}
	fi->direct_io = 1;
	fuse_reply_open(req, fi);
}

static int out_of_range(off_t off, size_t size)
{
	return off < 0 || (size_t)off > disk_size || size > disk_size - (size_t)off;
}

static void ms_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	if ((size_t)off >= disk_size) {
		fuse_reply_buf(req, NULL, 0);
		return;
	}
	if (size > disk_size - off)
		size = disk_size - off;
	fuse_reply_buf(req, (const char *)disk + off, size);
}

static void ms_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	if (out_of_range(off, size)) {
		fuse_reply_err(req, ENOSPC);
		return;
	}
	memcpy(disk + off, buf, size);
	fuse_reply_write(req, size);
}

static void ms_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off, off_t len,
			 struct fuse_file_info *fi)
{
	if (mode != (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)) {
		fuse_reply_err(req, EOPNOTSUPP);
		return;
	}
	if (out_of_range(off, len)) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	/* Whole pages go back to the kernel; the edges are zeroed. */
	size_t start = (off + page_size - 1) / page_size * page_size;
	size_t end = (off + len) / page_size * page_size;
	if (start < end) {
		memset(disk + off, 0, start - off);
		madvise(disk + start, end - start, MADV_DONTNEED);
		memset(disk + end, 0, off + len - end);
	} else {
		memset(disk + off, 0, len);
	}
	fuse_reply_err(req, 0);
}

static void ms_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	char buf[256];
	size_t used = 0;
	struct stat st;
	const char *names[] = {".", "..", DISK_NAME};
	fuse_ino_t inos[] = {FUSE_ROOT_ID, FUSE_ROOT_ID, DISK_INO};

	for (off_t i = off; i < 3; i++) {
		stat_of(inos[i], &st);
		size_t n = fuse_add_direntry(req, buf + used, sizeof(buf) - used, names[i], &st, i + 1);
		if (used + n > size || used + n > sizeof(buf))
			break;
		used += n;
	}
	fuse_reply_buf(req, buf, used);
}

static const struct fuse_lowlevel_ops ops = {
	.init = ms_init,
	.lookup = ms_lookup,
	.getattr = ms_getattr,
	.open = ms_open,
	.read = ms_read,
	.write = ms_write,
	.fallocate = ms_fallocate,
	.readdir = ms_readdir,
};

int main(int argc, char **argv)
{
	char *end;

	if (argc != 3 || !(disk_size = strtoull(argv[2], &end, 10)) || *end) {
		fprintf(stderr, "usage: fuse_memserver MOUNTPOINT SIZE_BYTES\n");
		return 2;
	}
	page_size = sysconf(_SC_PAGESIZE);
	/* Untouched pages read as zeroes and cost nothing, like an empty zram. */
	disk = mmap(NULL, disk_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (disk == MAP_FAILED) {
		perror("fuse_memserver: mmap");
		return 1;
	}

	char *fuse_argv[] = {argv[0], "-o", "fsname=memserver,subtype=memserver", NULL};
	struct fuse_args args = FUSE_ARGS_INIT(3, fuse_argv);
	struct fuse_session *se = fuse_session_new(&args, &ops, sizeof(ops), NULL);
	if (!se)
		return 1;
	int ret = -1;
	if (fuse_set_signal_handlers(se) == 0) {
		if (fuse_session_mount(se, argv[1]) == 0) {
			struct fuse_loop_config config = {.clone_fd = 0, .max_idle_threads = 10};
			ret = fuse_session_loop_mt(se, &config);
			fuse_session_unmount(se);
		}
		fuse_remove_signal_handlers(se);
	}
	fuse_session_destroy(se);
	/* A positive value is the signal that ended the loop: a clean stop. */
	return ret < 0 ? 1 : 0;
}
