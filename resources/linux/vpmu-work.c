/*
 * vpmu-work: a tiny CPU-bound workload with distinct, non-inlined functions so that
 * `perf record` + `perf report` inside the guest can show recognisable symbols.
 *
 *   vpmu-work [SECONDS]      (default 1; spins until that much CPU time has passed)
 *
 * Built statically with symbols by resources/linux/build-image.sh (gcc -O1 -g -static).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static volatile uint64_t sink;

__attribute__((noinline, noipa)) uint64_t vpmu_work_integer_mix(uint64_t n)
{
	uint64_t x = 0x9e3779b97f4a7c15ull;
	for (uint64_t i = 0; i < n; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
	}
	return x;
}

__attribute__((noinline, noipa)) uint64_t vpmu_work_memory_walk(uint64_t n)
{
	static uint32_t buf[1 << 16];
	uint64_t s = 0;
	uint32_t idx = 1;
	for (uint64_t i = 0; i < n; i++) {
		idx = (idx * 1103515245u + 12345u) & ((1u << 16) - 1);
		buf[idx] += (uint32_t)i;
		s += buf[(idx * 7) & ((1u << 16) - 1)];
	}
	return s;
}

__attribute__((noinline, noipa)) uint64_t vpmu_work_branchy(uint64_t n)
{
	uint64_t s = 0, r = 12345;
	for (uint64_t i = 0; i < n; i++) {
		r = r * 6364136223846793005ull + 1442695040888963407ull;
		if (r & (1ull << 33))
			s += i;
		else
			s ^= r;
	}
	return s;
}

static double cpu_seconds(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	double seconds = argc > 1 ? atof(argv[1]) : 1.0;
	double start = cpu_seconds();
	unsigned long rounds = 0;

	do {
		sink += vpmu_work_integer_mix(200000);
		sink += vpmu_work_memory_walk(100000);
		sink += vpmu_work_branchy(200000);
		rounds++;
	} while (cpu_seconds() - start < seconds);
	printf("vpmu-work: %lu rounds in %.2f s cpu\n", rounds, cpu_seconds() - start);
	return 0;
}
