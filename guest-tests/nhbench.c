/*
 * nhbench: autonuma-benchmark-style workloads for numa-harness, sized for a small guest.
 *
 *   nhbench numa01|numa02 MIB SECS free|bind|inverse [share=S|hint-faults=K]
 *
 * numa02: one process, one thread per CPU, each pinned to its CPU and writing its own slice of
 *         one private anonymous buffer, over and over.
 * numa01: two processes (the CPUs split in halves), their threads pinned likewise, sharing one
 *         MAP_SHARED buffer; each thread writes its own slice of it.
 * The whole buffer is first touched by the parent from the first node's CPUs, so at the start
 * every slice of a thread on another node is remote. Variants:
 *   free     default policy: NUMA balancing has to move each slice to its thread's node;
 *   bind     each slice mbind()ed (MPOL_BIND | MPOL_F_NUMA_BALANCING, moved) to its thread's
 *            node: the best case, scanned and hint-faulted like the free one;
 *   inverse  each slice bound likewise to the node of the CPU half a machine away: the worst case.
 *            The scanner works on both (the flag makes vma_policy_mof true), and mpol_misplaced
 *            keeps every page where its single-node policy put it.
 *
 * Output, every 250 ms from the parent, one line:
 *   sample T local SHARE nodes N0,N1,.. threads S0,S1,.. vmstat HINT,LOCAL,MIGRATED,PTE_UPDATES writes W0,W1,..
 * (SHARE: fraction of all slice pages on their thread's node; Si the same per thread; Nk pages on
 * node k, from move_pages; Wi the pages thread i has written so far, counted per pass over its
 * slice), then "done writes W seconds S stopped REASON". It runs SECS seconds
 * ("deadline"), or stops at the first sample where the local share is at least S ("share"), or
 * where the hint faults since the first sample (vmstat numa_hint_faults) reach K times the
 * buffer's pages ("hint-faults").
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL
#define MAX_CPUS 64
#define MAX_NODES 16
#define MPOL_BIND 2
#define MPOL_MF_MOVE (1 << 1)
#define MPOL_F_NUMA_BALANCING (1 << 13) /* include/uapi/linux/mempolicy.h, Linux 5.12 on */

static int nr_cpus, nr_nodes, node_of_cpu[MAX_CPUS];
static char *buffer;
static size_t slice_len;
static volatile uint64_t *writes; /* shared: one counter per thread */
static volatile int *stop;

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int read_topology(void)
{
	for (int node = 0; node < MAX_NODES; node++) {
		char path[96], buf[256];
		snprintf(path, sizeof(path), "/sys/devices/system/node/node%d/cpulist", node);
		FILE *f = fopen(path, "r");
		if (!f)
			continue;
		if (!fgets(buf, sizeof(buf), f))
			buf[0] = 0;
		fclose(f);
		nr_nodes = node + 1;
		for (char *tok = strtok(buf, ",\n"); tok; tok = strtok(NULL, ",\n")) {
			int a, b;
			if (sscanf(tok, "%d-%d", &a, &b) != 2) {
				if (sscanf(tok, "%d", &a) != 1)
					continue;
				b = a;
			}
			for (int c = a; c <= b && c < MAX_CPUS; c++) {
				node_of_cpu[c] = node;
				if (c + 1 > nr_cpus)
					nr_cpus = c + 1;
			}
		}
	}
	return nr_cpus > 0 ? 0 : -1;
}

static int pin(int cpu)
{
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	return sched_setaffinity(0, sizeof(set), &set);
}

/* The node each thread's slice should live on in this variant. */
static int home_node(int cpu, int inverse)
{
	return node_of_cpu[inverse ? (cpu + nr_cpus / 2) % nr_cpus : cpu];
}

static void *worker(void *arg)
{
	int cpu = (int)(intptr_t)arg;
	if (pin(cpu)) {
		perror("nhbench: pin");
		exit(1);
	}
	volatile char *slice = buffer + cpu * slice_len;
	while (!*stop) {
		for (size_t off = 0; off < slice_len; off += PAGE)
			slice[off]++;
		writes[cpu] += slice_len / PAGE;
	}
	return NULL;
}

static void run_threads(int first, int last)
{
	pthread_t threads[MAX_CPUS];
	for (int cpu = first; cpu < last; cpu++)
		if (pthread_create(&threads[cpu], NULL, worker, (void *)(intptr_t)cpu)) {
			perror("nhbench: pthread_create");
			exit(1);
		}
	for (int cpu = first; cpu < last; cpu++)
		pthread_join(threads[cpu], NULL);
}

static void vmstat(unsigned long *out)
{
	static const char *names[] = { "numa_hint_faults ", "numa_hint_faults_local ", "numa_pages_migrated ",
				       "numa_pte_updates " };
	char line[128];
	FILE *f = fopen("/proc/vmstat", "r");
	memset(out, 0, 4 * sizeof(*out));
	if (!f)
		return;
	while (fgets(line, sizeof(line), f))
		for (int i = 0; i < 4; i++)
			if (!strncmp(line, names[i], strlen(names[i])))
				out[i] = strtoul(line + strlen(names[i]), NULL, 10);
	fclose(f);
}

/* One sample line; returns the local share and sets *hint_faults to vmstat's numa_hint_faults. */
static double sample(double t, void **pages, int *status, size_t count, unsigned long *hint_faults)
{
	long on_node[MAX_NODES] = { 0 }, local[MAX_CPUS] = { 0 }, total_local = 0;
	unsigned long counters[4];
	if (syscall(SYS_move_pages, 0, count, pages, NULL, status, 0)) {
		perror("nhbench: move_pages");
		exit(1);
	}
	size_t per_slice = slice_len / PAGE;
	for (size_t i = 0; i < count; i++) {
		int cpu = (int)(i / per_slice);
		if (status[i] >= 0 && status[i] < MAX_NODES)
			on_node[status[i]]++;
		if (status[i] == node_of_cpu[cpu]) {
			local[cpu]++;
			total_local++;
		}
	}
	vmstat(counters);
	printf("sample %.2f local %.4f nodes", t, (double)total_local / count);
	for (int n = 0; n < nr_nodes; n++)
		printf("%c%ld", n ? ',' : ' ', on_node[n]);
	printf(" threads");
	for (int c = 0; c < nr_cpus; c++)
		printf("%c%.4f", c ? ',' : ' ', (double)local[c] / per_slice);
	printf(" vmstat %lu,%lu,%lu,%lu writes", counters[0], counters[1], counters[2], counters[3]);
	for (int c = 0; c < nr_cpus; c++)
		printf("%c%llu", c ? ',' : ' ', (unsigned long long)writes[c]);
	printf("\n");
	fflush(stdout);
	*hint_faults = counters[0];
	return (double)total_local / count;
}

int main(int argc, char **argv)
{
	double until_share = -1, until_faults = -1;
	if (argc == 6 && !strncmp(argv[5], "share=", 6))
		until_share = atof(argv[5] + 6);
	else if (argc == 6 && !strncmp(argv[5], "hint-faults=", 12))
		until_faults = atof(argv[5] + 12);
	if ((argc != 5 && argc != 6) || (argc == 6 && until_share < 0 && until_faults < 0) ||
	    (strcmp(argv[1], "numa01") && strcmp(argv[1], "numa02")) ||
	    (strcmp(argv[4], "free") && strcmp(argv[4], "bind") && strcmp(argv[4], "inverse"))) {
		fprintf(stderr, "usage: nhbench numa01|numa02 MIB SECS free|bind|inverse [share=S|hint-faults=K]\n");
		return 2;
	}
	int shared = !strcmp(argv[1], "numa01");
	int bind = !strcmp(argv[4], "bind"), inverse = !strcmp(argv[4], "inverse");
	double secs = atof(argv[3]);
	if (read_topology() || nr_cpus < 2) {
		fprintf(stderr, "nhbench: needs at least two CPUs in /sys/devices/system/node\n");
		return 1;
	}
	size_t len = strtoul(argv[2], NULL, 0) << 20;
	slice_len = len / nr_cpus / PAGE * PAGE;
	len = slice_len * nr_cpus;
	buffer = mmap(NULL, len, PROT_READ | PROT_WRITE, (shared ? MAP_SHARED : MAP_PRIVATE) | MAP_ANONYMOUS, -1, 0);
	char *control = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (buffer == MAP_FAILED || control == MAP_FAILED) {
		perror("nhbench: mmap");
		return 1;
	}
	stop = (volatile int *)control;
	writes = (volatile uint64_t *)(control + 64);
	/* First touch from the first node's first CPU: every other node's slices start remote. */
	if (pin(0)) {
		perror("nhbench: pin");
		return 1;
	}
	memset(buffer, 1, len);
	if (bind || inverse) {
		for (int cpu = 0; cpu < nr_cpus; cpu++) {
			unsigned long mask = 1UL << home_node(cpu, inverse);
			if (syscall(SYS_mbind, buffer + cpu * slice_len, slice_len, MPOL_BIND | MPOL_F_NUMA_BALANCING, &mask,
				    8 * sizeof(mask), MPOL_MF_MOVE)) {
				perror("nhbench: mbind");
				return 1;
			}
		}
	}
	size_t count = len / PAGE;
	void **pages = malloc(count * sizeof(*pages));
	int *status = malloc(count * sizeof(*status));
	for (size_t i = 0; i < count; i++)
		pages[i] = buffer + i * PAGE;
	double started = now();
	pid_t child = -1;
	if (shared) {
		/* numa01: the second process runs the second half of the CPUs. */
		child = fork();
		if (child < 0) {
			perror("nhbench: fork");
			return 1;
		}
		if (child == 0) {
			run_threads(nr_cpus / 2, nr_cpus);
			_exit(0);
		}
	}
	/* This process's workers; they stop with the process. */
	for (int cpu = 0; cpu < (shared ? nr_cpus / 2 : nr_cpus); cpu++) {
		pthread_t thread;
		if (pthread_create(&thread, NULL, worker, (void *)(intptr_t)cpu)) {
			perror("nhbench: pthread_create");
			return 1;
		}
	}
	/* The sampling thread (this one) runs wherever the scheduler puts it; it barely runs. */
	cpu_set_t all;
	CPU_ZERO(&all);
	for (int c = 0; c < nr_cpus; c++)
		CPU_SET(c, &all);
	sched_setaffinity(0, sizeof(all), &all);
	printf("pid %d child %d cpus %d nodes %d slice_pages %zu\n", getpid(), (int)child, nr_cpus, nr_nodes,
	       slice_len / PAGE);
	fflush(stdout);
	const char *reason = "deadline";
	unsigned long hint_faults, first_hint_faults = 0;
	for (double t = 0; t < secs; t = now() - started) {
		double share = sample(t, pages, status, count, &hint_faults);
		if (t == 0)
			first_hint_faults = hint_faults;
		if (until_share >= 0 && share >= until_share) {
			reason = "share";
			break;
		}
		if (until_faults >= 0 && hint_faults - first_hint_faults >= until_faults * count) {
			reason = "hint-faults";
			break;
		}
		usleep(250000);
	}
	if (!strcmp(reason, "deadline"))
		sample(now() - started, pages, status, count, &hint_faults);
	*stop = 1;
	if (child > 0)
		waitpid(child, NULL, 0);
	uint64_t total = 0;
	for (int c = 0; c < nr_cpus; c++)
		total += writes[c];
	printf("done writes %llu seconds %.2f stopped %s\n", (unsigned long long)total, now() - started, reason);
	return 0;
}
