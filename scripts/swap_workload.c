// SPDX-License-Identifier: GPL-2.0-only
/*
 * A swap workload that checks every page it wrote, lean enough that its
 * own CPU time is small beside the swap device's.
 *
 * Where it sits: outside zramfs.  scripts/swap_workload.py compiles it with
 * the system cc and runs it; scripts/bench.py and the system tests run it in
 * a memory cgroup (scripts/memcg.py) whose limit is well under --mib, so its
 * pages go out to swap and come back.
 *
 * 1. Map --mib MiB of private anonymous memory and fill every page.
 * 2. Make --touches random page touches: each checks the page; a share of
 *    them (--rewrite) then writes the page anew with the next version, so
 *    swapped-out copies go stale and must be replaced.
 * 3. Check every page once more.
 *
 * A page's content is derived from (index, version), so every page is
 * checked without a copy: the first half is taken from a 1 MiB pool of
 * random bytes at an offset hashed from (index, version) -- incompressible
 * -- and the second half is the 16-byte stamp (index, version) repeated,
 * which compresses to almost nothing.  So a page compresses about 2:1, and a
 * page that came back from the wrong slot or stale never matches.
 *
 * Prints one JSON object: wall_s, fill_s, touch_s, check_s, user_s, sys_s
 * (getrusage of this process: sys includes the reclaim and swap-in done in
 * its context), mib, pages, touches, rewrites, bad_pages.  Exit 1 if any
 * page was wrong, 2 on bad arguments.
 *
 * For tests: --stale-page N writes page N's next version without recording
 * it (what a lost swap write looks like); --dump N writes the content of
 * pages 0..N-1, versions 0..2, to stdout and exits.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define POOL_SIZE (1u << 20)

static size_t page_size, half;
static unsigned char *pool;

/* splitmix64: the pool's bytes and the touches' choices, from one seed. */
static uint64_t next_random(uint64_t *state)
{
	uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

static void fill(unsigned char *page, uint64_t index, uint64_t version)
{
	/* Two odd 64-bit constants (golden ratio, xxhash's PRIME64_2) spread
	 * neighbouring indexes and versions over the whole pool. */
	uint64_t h = (index + 1) * 0x9E3779B97F4A7C15ull ^ (version + 1) * 0xC2B2AE3D27D4EB4Full;
	uint64_t stamp[2] = {index, version};

	memcpy(page, pool + (h >> 17) % POOL_SIZE, half);
	for (size_t off = half; off < page_size; off += sizeof(stamp))
		memcpy(page + off, stamp, sizeof(stamp));
}

/* fill()'s content without building a copy: the check reads the page once. */
static int matches(const unsigned char *page, uint64_t index, uint64_t version)
{
	uint64_t h = (index + 1) * 0x9E3779B97F4A7C15ull ^ (version + 1) * 0xC2B2AE3D27D4EB4Full;
	const uint64_t *stamps = (const uint64_t *)(page + half);
	uint64_t diff = 0;

	if (memcmp(page, pool + (h >> 17) % POOL_SIZE, half))
		return 0;
	for (size_t i = 0; i < half / 8; i += 2)
		diff |= (stamps[i] ^ index) | (stamps[i + 1] ^ version);
	return diff == 0;
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double seconds(struct timeval tv)
{
	return tv.tv_sec + tv.tv_usec / 1e6;
}

static int usage(const char *msg)
{
	fprintf(stderr, "swap_workload: error: %s\n", msg);
	return 2;
}

int main(int argc, char **argv)
{
	long mib = 256, touches = 300000, stale_page = -1, dump = -1;
	double rewrite = 0.25;
	uint64_t seed = 1;

	for (int i = 1; i < argc; i++) {
		char *end;
		if (i + 1 >= argc)
			return usage("every option takes a value: --mib, --touches, --rewrite, --seed");
		const char *opt = argv[i], *val = argv[++i];
		if (!strcmp(opt, "--rewrite")) {
			rewrite = strtod(val, &end);
			if (*end || !(rewrite >= 0.0 && rewrite <= 1.0))
				return usage("--rewrite must be between 0 and 1");
			continue;
		}
		long v = strtol(val, &end, 10);
		if (*end || !*val)
			return usage("option values must be integers (--rewrite: a fraction)");
		if (!strcmp(opt, "--mib") && v >= 1)
			mib = v;
		else if (!strcmp(opt, "--mib"))
			return usage("--mib must be at least 1");
		else if (!strcmp(opt, "--touches") && v >= 0)
			touches = v;
		else if (!strcmp(opt, "--touches"))
			return usage("--touches must not be negative");
		else if (!strcmp(opt, "--seed"))
			seed = (uint64_t)v;
		else if (!strcmp(opt, "--stale-page"))
			stale_page = v;
		else if (!strcmp(opt, "--dump"))
			dump = v;
		else
			return usage("unknown option (known: --mib, --touches, --rewrite, --seed)");
	}

	page_size = (size_t)sysconf(_SC_PAGESIZE);
	half = page_size / 2;
	pool = malloc(POOL_SIZE + half);
	unsigned char *scratch = malloc(page_size);
	if (!pool || !scratch)
		return usage("out of memory for the pool");
	uint64_t state = seed;
	for (size_t i = 0; i < POOL_SIZE + half; i += 8) {
		uint64_t r = next_random(&state);
		memcpy(pool + i, &r, 8);
	}

	if (dump >= 0) {
		for (long i = 0; i < dump; i++)
			for (uint64_t v = 0; v < 3; v++) {
				fill(scratch, i, v);
				fwrite(scratch, 1, page_size, stdout);
			}
		return 0;
	}

	size_t pages = (size_t)mib * ((1u << 20) / page_size);
	if (stale_page >= (long)pages)
		return usage("--stale-page must be a page of the working set");
	uint32_t *versions = calloc(pages, sizeof(*versions));
	unsigned char *bad = calloc(pages, 1);
	/* MAP_PRIVATE anonymous: the pages swap is for (not shmem). */
	unsigned char *mem = mmap(NULL, pages * page_size, PROT_READ | PROT_WRITE,
				  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (!versions || !bad || mem == MAP_FAILED)
		return usage("cannot map the working set");

	double start = now();
	for (size_t i = 0; i < pages; i++)
		fill(mem + i * page_size, i, 0);
	if (stale_page >= 0)
		fill(mem + stale_page * page_size, stale_page, 1);
	double filled = now();

	long rewrites = 0;
	uint64_t threshold = (uint64_t)(rewrite * 18446744073709551615.0);
	for (long t = 0; t < touches; t++) {
		size_t i = next_random(&state) % pages;
		unsigned char *page = mem + i * page_size;
		if (!matches(page, i, versions[i]))
			bad[i] = 1;
		if (rewrite > 0.0 && next_random(&state) <= threshold) {
			fill(page, i, ++versions[i]);
			rewrites++;
		}
	}
	double touched = now();

	size_t bad_pages = 0;
	for (size_t i = 0; i < pages; i++) {
		if (!matches(mem + i * page_size, i, versions[i]))
			bad[i] = 1;
		bad_pages += bad[i];
	}
	double checked = now();

	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	printf("{\"wall_s\": %.3f, \"fill_s\": %.3f, \"touch_s\": %.3f, \"check_s\": %.3f, "
	       "\"user_s\": %.3f, \"sys_s\": %.3f, \"mib\": %ld, \"pages\": %zu, \"touches\": %ld, "
	       "\"rewrites\": %ld, \"bad_pages\": %zu}\n",
	       checked - start, filled - start, touched - filled, checked - touched,
	       seconds(ru.ru_utime), seconds(ru.ru_stime), mib, pages, touches, rewrites, bad_pages);
	return bad_pages ? 1 : 0;
}
