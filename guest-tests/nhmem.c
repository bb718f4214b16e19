/*
 * nhmem: memory helper for numa-harness tests, run inside the guest.
 *
 *   nhmem hold MIB [thp] [node N] [split M [splitat K]] [ro] [extras] [helper] [bind B] [workers W]
 *              [quiet] [shared] [procs]
 *       Map MIB of anonymous memory (2 MiB aligned; MADV_HUGEPAGE with "thp") and write every
 *       page from a CPU of node N ("node N"; with "split M" the second half from node M, or
 *       every page from the K-th on with "splitat K"), then
 *       print "pid PID addr 0xADDR len BYTES". "ro" then makes the region read-only (its hint
 *       faults carry TNF_NO_GROUP: no numa_group forms). "extras" also maps three 2 MiB regions
 *       the NUMA scanner must leave alone and prints "extras guard 0x.. bound 0x.. zero 0x..":
 *       a PROT_NONE guard, a region bound with MPOL_BIND to node 0 (no MPOL_F_NUMA_BALANCING),
 *       and a region only ever read (zero page). "helper" starts a thread that only sleeps:
 *       mm_users becomes 2, so the scanner stops skipping pages already on its CPU's node
 *       (change_pte_range), and the spinning task keeps faulting. "bind B" mbind()s the region
 *       to node B with MPOL_BIND | MPOL_F_NUMA_BALANCING before it is written: its pages stay
 *       on B (mpol_misplaced), but the scanner hints them and their faults count on B.
 *       "workers W" starts W persistent threads (1..W) that wait for commands ("on W ..."): a
 *       worker keeps its tid, so pages it faulted last record it, and it can spin on its CPU
 *       while another thread faults (task_numa_group looks at the CPU's current task).
 *       "quiet" then binds every other mapping of the process (program data, stacks, the
 *       workers' mailboxes) with MPOL_BIND to the nodes with memory, without
 *       MPOL_F_NUMA_BALANCING: the scanner skips a VMA whose policy lacks MPOL_F_MOF
 *       (vma_policy_mof), so the region is the only memory that takes hint faults and no
 *       thread picks up another's last_cpupid elsewhere.
 *       "shared" maps the region MAP_SHARED (shmem). "procs" makes the workers processes forked
 *       after the region is written (and after "quiet": they inherit its policies); the holder
 *       then unmaps the region, so a page's mapcount counts the workers that mapped it.
 *       Then it obeys lines on stdin until EOF, answering "ok" to each:
 *         [thread] touch [node N] [pages K]  write every page (the first K) from a CPU of node N
 *         [thread] read [node N] [pages K]   read them
 *         [thread] spin SECS [node N]        burn CPU without touching the region, so that the
 *                                            NUMA scanner (task_numa_work, run in this task's
 *                                            context) gets to run
 *         loop SECS [node N|free]          read the region over and over for SECS seconds
 *         map [node N]                      map a new 2 MiB anonymous VMA apart from every
 *                                            other (PROT_NONE guard pages on both sides keep it
 *                                            from merging), write it from a CPU of node N and
 *                                            print "mapped 0xADDR": a VMA the scanner meets late
 *         fork [node N] [pages K]          fork a child that writes every page (the first K)
 *                                            from a CPU of node N, so that those pages are
 *                                            copied for it (the holder's originals are then
 *                                            mapped once, the rest stay COW-shared), then sleeps
 *                                            until the holder dies (PR_SET_PDEATHSIG); print
 *                                            "child PID" once its writes are done
 *       With "thread" a new thread does it (and exits): its faults record its own tid.
 *       "on W" gives the command to worker W and answers once it is done; "on W ... &" answers
 *       at once and leaves it running ("on W wait" answers when it is done; "on W stop" ends a
 *       worker thread's spin now); "on W tid" prints
 *       "tid W TID" (a worker process's pid with "procs"). "cpu C" pins to that one CPU;
 *       "from I" starts at the region's page I. "unmap" (madvise MADV_DONTNEED) drops the
 *       caller's mapping of the pages (a shared region's pages stay, mapped by the others).
 *       "free" instead of "node N" lets the task run on every CPU (the scheduler, and NUMA
 *       balancing's task placement, choose), where "node N" pins it to node N's CPUs.
 *   nhmem fill NODE FREE           take pages of node NODE (MPOL_BIND, no balancing, in
 *                                  chunks) until its free pages (/proc/zoneinfo) are at most
 *                                  FREE, print "filled PID free N", then sleep until killed.
 *   nhmem pagemap PID START LEN    print "vaddr pfn" per present page, from /proc/PID/pagemap.
 *   nhmem nodes PID START LEN      print "vaddr node" per page, from move_pages(pid, nodes=NULL).
 *
 * No libnuma: mbind/move_pages go through syscall(), so the binary links statically.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL
#define MPOL_F_NUMA_BALANCING (1 << 13) /* include/uapi/linux/mempolicy.h, Linux 5.12 on */
#define HUGE (2UL << 20)

static int cpus_of_node(int node, cpu_set_t *set)
{
	char path[128], buf[256];
	snprintf(path, sizeof(path), "/sys/devices/system/node/node%d/cpulist", node);
	FILE *f = fopen(path, "r");
	if (!f || !fgets(buf, sizeof(buf), f))
		return -1;
	fclose(f);
	CPU_ZERO(set);
	for (char *tok = strtok(buf, ",\n"); tok; tok = strtok(NULL, ",\n")) {
		int a, b;
		if (sscanf(tok, "%d-%d", &a, &b) == 2) {
			for (int c = a; c <= b; c++)
				CPU_SET(c, set);
		} else if (sscanf(tok, "%d", &a) == 1) {
			CPU_SET(a, set);
		}
	}
	return 0;
}

static void touch(volatile char *p, size_t len)
{
	for (size_t off = 0; off < len; off += PAGE)
		p[off] = (char)(off >> 12) | 1;
}

static unsigned long read_all(volatile char *p, size_t len)
{
	unsigned long sum = 0;
	for (size_t off = 0; off < len; off += PAGE)
		sum += p[off];
	return sum;
}

#define ANY_NODE -2 /* "free": every CPU */

static int run_on_node(int node)
{
	cpu_set_t set;
	if (node == ANY_NODE) {
		CPU_ZERO(&set);
		for (int c = 0; c < CPU_SETSIZE && c < sysconf(_SC_NPROCESSORS_CONF); c++)
			CPU_SET(c, &set);
		if (sched_setaffinity(0, sizeof(set), &set)) {
			fprintf(stderr, "nhmem: cannot run on every CPU: %s\n", strerror(errno));
			return -1;
		}
		return 0;
	}
	if (node < 0)
		return 0;
	if (cpus_of_node(node, &set) || sched_setaffinity(0, sizeof(set), &set)) {
		fprintf(stderr, "nhmem: cannot run on node %d: %s\n", node, strerror(errno));
		return -1;
	}
	return 0;
}

static void *sleeper(void *unused)
{
	(void)unused;
	for (;;)
		pause();
	return NULL;
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

struct op {
	char verb[16];
	char *p;
	size_t len;
	int on;
	int cpu; /* one CPU, or -1: then `on` decides */
	double secs;
	volatile int *stop; /* a worker thread's "stop" flag: ends a spin early */
};

static int run_on_cpu(int cpu)
{
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (sched_setaffinity(0, sizeof(set), &set)) {
		fprintf(stderr, "nhmem: cannot run on cpu %d: %s\n", cpu, strerror(errno));
		return -1;
	}
	return 0;
}

/* One command: 0 done, 1 unknown, -1 cannot run on the node. */
static int run_op(struct op *op)
{
	if (op->cpu >= 0 ? run_on_cpu(op->cpu) : run_on_node(op->on))
		return -1;
	if (!strcmp(op->verb, "touch")) {
		touch(op->p, op->len);
	} else if (!strcmp(op->verb, "read")) {
		if (read_all(op->p, op->len) == 42)
			printf("#");
	} else if (!strcmp(op->verb, "map")) {
		char *area = mmap(NULL, HUGE + 2 * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (area == MAP_FAILED || mprotect(area + PAGE, HUGE, PROT_READ | PROT_WRITE)) {
			perror("nhmem: map");
			return -1;
		}
		touch(area + PAGE, HUGE);
		printf("mapped %p\n", (void *)(area + PAGE));
	} else if (!strcmp(op->verb, "fork")) {
		int done[2];
		char byte;
		fflush(stdout);  /* the child must not inherit (and repeat) buffered lines */
		if (pipe(done)) {
			perror("nhmem: pipe");
			return -1;
		}
		pid_t child = fork();
		if (child < 0) {
			perror("nhmem: fork");
			return -1;
		}
		if (child == 0) {
			/* Killed with the holder, whichever way it ends. */
			if (prctl(PR_SET_PDEATHSIG, SIGKILL) || getppid() == 1)
				_exit(1);
			touch(op->p, op->len);
			if (write(done[1], "w", 1) != 1)
				_exit(1);
			for (;;)
				pause();
		}
		close(done[1]);
		if (read(done[0], &byte, 1) != 1) {
			fprintf(stderr, "nhmem: the forked child died before its writes were done\n");
			return -1;
		}
		close(done[0]);
		printf("child %d\n", (int)child);
	} else if (!strcmp(op->verb, "loop")) {
		double end = now() + op->secs;
		while (now() < end)
			if (read_all(op->p, op->len) == 42)
				printf("#");
	} else if (!strcmp(op->verb, "unmap")) {
		if (madvise(op->p, op->len, MADV_DONTNEED)) {
			perror("nhmem: unmap");
			return -1;
		}
	} else if (!strcmp(op->verb, "spin")) {
		double end = now() + op->secs;
		volatile unsigned long spins = 0;
		while (now() < end && !(op->stop && *op->stop))
			spins++;
	} else {
		return 1;
	}
	return 0;
}

static void *run_op_thread(void *op)
{
	return (void *)(intptr_t)run_op(op);
}

/* A persistent thread and its mailbox: the main thread posts one op at a time. */
struct worker {
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct op op;
	int busy; /* an op is posted and not yet done */
	int status;
	pid_t tid;
	volatile int stop; /* "on W stop": end the running spin now */
	/* A worker process ("procs"): ops go down cmd_fd, statuses come back on done_fd. */
	int proc, cmd_fd, done_fd, pending;
};

#define MAX_WORKERS 4
static struct worker workers[MAX_WORKERS];

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	pthread_mutex_lock(&w->lock);
	w->tid = (pid_t)syscall(SYS_gettid);
	pthread_cond_broadcast(&w->cond);
	for (;;) {
		while (!w->busy)
			pthread_cond_wait(&w->cond, &w->lock);
		struct op op = w->op;
		pthread_mutex_unlock(&w->lock);
		int status = run_op(&op);
		fflush(stdout);
		pthread_mutex_lock(&w->lock);
		w->status = status;
		w->busy = 0;
		pthread_cond_broadcast(&w->cond);
	}
	return NULL;
}

static int start_workers(int count)
{
	for (int i = 0; i < count; i++) {
		struct worker *w = &workers[i];
		pthread_mutex_init(&w->lock, NULL);
		pthread_cond_init(&w->cond, NULL);
		if (pthread_create(&w->thread, NULL, worker_main, w)) {
			perror("nhmem: worker");
			return -1;
		}
		pthread_mutex_lock(&w->lock);
		while (!w->tid)
			pthread_cond_wait(&w->cond, &w->lock);
		pthread_mutex_unlock(&w->lock);
	}
	return 0;
}

static int start_worker_procs(int count)
{
	for (int i = 0; i < count; i++) {
		struct worker *w = &workers[i];
		int cmd[2], done[2];
		if (pipe(cmd) || pipe(done)) {
			perror("nhmem: worker pipes");
			return -1;
		}
		fflush(stdout); /* the child must not inherit (and repeat) buffered lines */
		pid_t child = fork();
		if (child < 0) {
			perror("nhmem: worker fork");
			return -1;
		}
		if (child == 0) {
			/* Killed with the holder, whichever way it ends. */
			if (prctl(PR_SET_PDEATHSIG, SIGKILL) || getppid() == 1)
				_exit(1);
			close(cmd[1]);
			close(done[0]);
			struct op op;
			while (read(cmd[0], &op, sizeof(op)) == (ssize_t)sizeof(op)) {
				int status = run_op(&op);
				fflush(stdout);
				if (write(done[1], &status, sizeof(status)) != (ssize_t)sizeof(status))
					_exit(1);
			}
			_exit(0);
		}
		close(cmd[0]);
		close(done[1]);
		w->proc = 1;
		w->tid = child;
		w->cmd_fd = cmd[1];
		w->done_fd = done[0];
	}
	return 0;
}

/* Wait until worker `w` is idle; its last op's status. */
static int worker_idle(struct worker *w)
{
	if (w->proc) {
		int status = 0;
		if (w->pending && read(w->done_fd, &status, sizeof(status)) != (ssize_t)sizeof(status))
			status = -1;
		w->pending = 0;
		return status;
	}
	pthread_mutex_lock(&w->lock);
	while (w->busy)
		pthread_cond_wait(&w->cond, &w->lock);
	int status = w->status;
	pthread_mutex_unlock(&w->lock);
	return status;
}

static int worker_run(struct worker *w, struct op *op, int async)
{
	worker_idle(w);
	if (w->proc) {
		if (write(w->cmd_fd, op, sizeof(*op)) != (ssize_t)sizeof(*op))
			return -1;
		w->pending = 1;
		return async ? 0 : worker_idle(w);
	}
	pthread_mutex_lock(&w->lock);
	w->op = *op;
	w->op.stop = &w->stop;
	w->stop = 0;
	w->busy = 1;
	w->status = 0;
	pthread_cond_broadcast(&w->cond);
	pthread_mutex_unlock(&w->lock);
	return async ? 0 : worker_idle(w);
}

/* The nodes with memory as a mask (/sys/devices/system/node/has_memory, e.g. "0-1"). */
static unsigned long memory_nodes(void)
{
	char buf[256];
	unsigned long mask = 0;
	FILE *f = fopen("/sys/devices/system/node/has_memory", "r");
	if (!f || !fgets(buf, sizeof(buf), f))
		return 0;
	fclose(f);
	for (char *tok = strtok(buf, ",\n"); tok; tok = strtok(NULL, ",\n")) {
		int a, b;
		if (sscanf(tok, "%d-%d", &a, &b) == 2)
			for (int n = a; n <= b && n < 64; n++)
				mask |= 1UL << n;
		else if (sscanf(tok, "%d", &a) == 1 && a < 64)
			mask |= 1UL << a;
	}
	return mask;
}

/* Bind every mapping but [keep, keep + len) and the kernel's special ones to the nodes with
 * memory, without MPOL_F_NUMA_BALANCING: task_numa_work skips them (vma_policy_mof). */
static int quiet_except(char *keep, size_t len)
{
	unsigned long mask = memory_nodes();
	char line[512];
	FILE *f = fopen("/proc/self/maps", "r");
	if (!mask || !f) {
		perror("nhmem: quiet");
		return -1;
	}
	/* Read the whole list first: mbind splits VMAs, which would shift a file read in between. */
	uintptr_t ranges[256][2];
	int count = 0;
	while (count < 256 && fgets(line, sizeof(line), f)) {
		uintptr_t a, b;
		if (sscanf(line, "%lx-%lx", &a, &b) != 2 || strstr(line, "[vdso]") || strstr(line, "[vvar") ||
		    strstr(line, "[vsyscall]"))
			continue;
		ranges[count][0] = a;
		ranges[count][1] = b;
		count++;
	}
	fclose(f);
	uintptr_t k0 = (uintptr_t)keep, k1 = (uintptr_t)keep + len;
	for (int i = 0; i < count; i++) {
		uintptr_t pieces[2][2] = { { ranges[i][0], ranges[i][1] < k0 ? ranges[i][1] : k0 },
					   { ranges[i][0] > k1 ? ranges[i][0] : k1, ranges[i][1] } };
		for (int j = 0; j < 2; j++) {
			if (pieces[j][0] >= pieces[j][1])
				continue;
			if (syscall(SYS_mbind, pieces[j][0], pieces[j][1] - pieces[j][0], 2 /* MPOL_BIND */, &mask,
				    8 * sizeof(mask), 0)) {
				fprintf(stderr, "nhmem: quiet: mbind %lx-%lx: %s\n", (unsigned long)pieces[j][0],
					(unsigned long)pieces[j][1], strerror(errno));
				return -1;
			}
		}
	}
	return 0;
}

static int hold(int argc, char **argv)
{
	size_t len = strtoul(argv[2], NULL, 0) << 20;
	int thp = 0, node = -1, extras = 0, helper = 0, split = -1, readonly = 0, bind = -1, nworkers = 0, quiet = 0;
	int shared = 0, procs = 0;
	size_t split_at = len / 2;
	for (int i = 3; i < argc; i++) {
		if (!strcmp(argv[i], "thp"))
			thp = 1;
		else if (!strcmp(argv[i], "extras"))
			extras = 1;
		else if (!strcmp(argv[i], "helper"))
			helper = 1;
		else if (!strcmp(argv[i], "node") && i + 1 < argc)
			node = atoi(argv[++i]);
		else if (!strcmp(argv[i], "ro"))
			readonly = 1;
		else if (!strcmp(argv[i], "split") && i + 1 < argc)
			split = atoi(argv[++i]);
		else if (!strcmp(argv[i], "splitat") && i + 1 < argc)
			split_at = strtoul(argv[++i], NULL, 0) * PAGE;
		else if (!strcmp(argv[i], "bind") && i + 1 < argc)
			bind = atoi(argv[++i]);
		else if (!strcmp(argv[i], "workers") && i + 1 < argc)
			nworkers = atoi(argv[++i]);
		else if (!strcmp(argv[i], "quiet"))
			quiet = 1;
		else if (!strcmp(argv[i], "shared"))
			shared = 1;
		else if (!strcmp(argv[i], "procs"))
			procs = 1;
	}
	if (nworkers < 0 || nworkers > MAX_WORKERS) {
		fprintf(stderr, "nhmem: workers %d: at most %d\n", nworkers, MAX_WORKERS);
		return 1;
	}
	if (split_at == 0 || split_at >= len) {
		fprintf(stderr, "nhmem: splitat %zu: must name a page inside the region (1..%zu)\n", split_at / PAGE,
			len / PAGE - 1);
		return 1;
	}
	if (run_on_node(node))
		return 1;
	/* Over-map and align to 2 MiB so that a THP request can be honoured from the first byte. */
	char *raw = mmap(NULL, len + HUGE, PROT_READ | PROT_WRITE, (shared ? MAP_SHARED : MAP_PRIVATE) | MAP_ANONYMOUS,
			 -1, 0);
	if (raw == MAP_FAILED) {
		perror("nhmem: mmap");
		return 1;
	}
	char *p = (char *)(((uintptr_t)raw + HUGE - 1) & ~(HUGE - 1));
	if (thp && madvise(p, len, MADV_HUGEPAGE)) {
		perror("nhmem: madvise");
		return 1;
	}
	if (bind >= 0) {
		unsigned long mask = 1UL << bind;
		if (syscall(SYS_mbind, p, len, 2 /* MPOL_BIND */ | MPOL_F_NUMA_BALANCING, &mask, 8 * sizeof(mask), 0)) {
			perror("nhmem: mbind");
			return 1;
		}
	}
	if (split >= 0) {
		/* First touch places the pages from split_at on on node `split`, those before on `node`. */
		touch(p, split_at);
		if (run_on_node(split))
			return 1;
		touch(p + split_at, len - split_at);
		if (run_on_node(node))
			return 1;
	} else {
		touch(p, len);
	}
	/* Read-only: hint faults on it carry TNF_NO_GROUP (numa_migrate_check), so no numa_group forms. */
	if (readonly && mprotect(p, len, PROT_READ)) {
		perror("nhmem: mprotect");
		return 1;
	}
	if (helper) {
		pthread_t thread;
		if (pthread_create(&thread, NULL, sleeper, NULL)) {
			perror("nhmem: helper thread");
			return 1;
		}
	}
	if (procs) {
		/* Processes inherit the policies "quiet" sets; the holder then leaves the region to them. */
		if ((quiet && quiet_except(p, len)) || start_worker_procs(nworkers) || munmap(raw, len + HUGE))
			return 1;
	} else {
		if (start_workers(nworkers))
			return 1;
		if (quiet && quiet_except(p, len))
			return 1;
	}
	printf("pid %d addr %p len %zu\n", getpid(), (void *)p, len);
	if (extras) {
		char *guard = mmap(NULL, HUGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		char *bound = mmap(NULL, HUGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		char *zero = mmap(NULL, HUGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		unsigned long node0 = 1;
		if (guard == MAP_FAILED || bound == MAP_FAILED || zero == MAP_FAILED ||
		    syscall(SYS_mbind, bound, HUGE, 2 /* MPOL_BIND */, &node0, 8 * sizeof(node0), 0)) {
			perror("nhmem: extras");
			return 1;
		}
		madvise(zero, HUGE, MADV_NOHUGEPAGE);
		touch(bound, HUGE);
		if (read_all(zero, HUGE) == 42)
			printf("#");
		printf("extras guard %p bound %p zero %p\n", (void *)guard, (void *)bound, (void *)zero);
	}
	fflush(stdout);
	char line[128];
	while (fgets(line, sizeof(line), stdin)) {
		struct op op = { .p = p, .len = len, .on = -1, .cpu = -1 };
		char *rest = line;
		struct worker *worker = NULL;
		int target, skip;
		if (sscanf(rest, "on %d %n", &target, &skip) == 1) {
			if (target < 1 || target > nworkers) {
				printf("error no worker %d (hold ... workers N)\n", target);
				fflush(stdout);
				continue;
			}
			worker = &workers[target - 1];
			rest += skip;
		}
		int async = strchr(rest, '&') != NULL;
		int in_thread = !strncmp(rest, "thread ", 7);
		if (in_thread)
			rest += 7;
		char *arg = strstr(rest, "node ");
		if (arg)
			op.on = atoi(arg + 5);
		if (strstr(rest, " free"))
			op.on = ANY_NODE;
		arg = strstr(rest, "pages ");
		if (arg && strtoul(arg + 6, NULL, 0) * PAGE < len)
			op.len = strtoul(arg + 6, NULL, 0) * PAGE;
		arg = strstr(rest, "cpu ");
		if (arg)
			op.cpu = atoi(arg + 4);
		arg = strstr(rest, "from ");
		if (arg) {
			size_t first = strtoul(arg + 5, NULL, 0) * PAGE;
			if (first >= len) {
				printf("error from %zu: past the region's %zu pages\n", first / PAGE, len / PAGE);
				fflush(stdout);
				continue;
			}
			op.p += first;
			if (op.len > len - first)
				op.len = len - first;
		}
		if (sscanf(rest, "%15s", op.verb) != 1)
			continue;
		if (!strcmp(op.verb, "spin") && sscanf(rest, "spin %lf", &op.secs) != 1)
			op.verb[0] = 0;
		if (!strcmp(op.verb, "loop") && sscanf(rest, "loop %lf", &op.secs) != 1)
			op.verb[0] = 0;
		int status;
		if (worker && !strcmp(op.verb, "wait")) {
			status = worker_idle(worker);
		} else if (worker && !strcmp(op.verb, "stop")) {
			if (worker->proc) {
				printf("error stop: worker %d is a process (only worker threads can be stopped)\n", target);
				fflush(stdout);
				continue;
			}
			worker->stop = 1; /* the worker ends its spin at its next clock read */
			status = 0;
		} else if (worker && !strcmp(op.verb, "tid")) {
			printf("tid %d %d\n", target, (int)worker->tid);
			status = 0;
		} else if (worker) {
			status = worker_run(worker, &op, async);
		} else if (in_thread) {
			/* A fresh thread: its faults record its own tid in last_cpupid (shared faults for the main thread). */
			pthread_t thread;
			void *result;
			if (pthread_create(&thread, NULL, run_op_thread, &op) || pthread_join(thread, &result))
				return 1;
			status = (int)(intptr_t)result;
		} else {
			status = run_op(&op);
		}
		if (status < 0)
			return 1;
		if (status > 0) {
			printf("error unknown command: %s", line);
			fflush(stdout);
			continue;
		}
		printf("ok\n");
		fflush(stdout);
	}
	return 0;
}

static int pagemap(char **argv)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%s/pagemap", argv[2]);
	int fd = open(path, O_RDONLY);
	if (fd < 0) {
		perror("nhmem: pagemap");
		return 1;
	}
	uintptr_t start = strtoull(argv[3], NULL, 0);
	size_t len = strtoull(argv[4], NULL, 0);
	for (uintptr_t va = start; va < start + len; va += PAGE) {
		uint64_t entry;
		if (pread(fd, &entry, sizeof(entry), (va / PAGE) * 8) != sizeof(entry))
			return 1;
		if (entry & (1ULL << 63))
			printf("0x%lx 0x%llx\n", (unsigned long)va, (unsigned long long)(entry & ((1ULL << 55) - 1)));
	}
	return 0;
}

static int nodes(char **argv)
{
	int pid = atoi(argv[2]);
	uintptr_t start = strtoull(argv[3], NULL, 0);
	size_t count = strtoull(argv[4], NULL, 0) / PAGE;
	void **pages = calloc(count, sizeof(void *));
	int *status = calloc(count, sizeof(int));
	for (size_t i = 0; i < count; i++)
		pages[i] = (void *)(start + i * PAGE);
	if (syscall(SYS_move_pages, pid, count, pages, NULL, status, 0)) {
		perror("nhmem: move_pages");
		return 1;
	}
	for (size_t i = 0; i < count; i++)
		printf("0x%lx %d\n", (unsigned long)(start + i * PAGE), status[i]);
	return 0;
}

/* The node's free pages as /proc/zoneinfo shows them ("pages free": NR_FREE_PAGES, the count
 * zone_watermark_ok tests), summed over its zones; -1 when unreadable. */
static long node_free_pages(int node)
{
	FILE *f = fopen("/proc/zoneinfo", "r");
	char line[256];
	long total = -1, value;
	int in_node = 0, n;
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "Node %d,", &n) == 1)
			in_node = n == node;
		else if (in_node && sscanf(line, " pages free %ld", &value) == 1)
			total = (total < 0 ? 0 : total) + value;
	}
	fclose(f);
	return total;
}

/* Bind, populate and keep `pages` pages on `node` (THPs when `huge`). */
static int fill_chunk(int node, size_t pages, int huge)
{
	size_t len = pages * PAGE;
	unsigned long mask = 1UL << node;
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED || syscall(SYS_mbind, p, len, 2 /* MPOL_BIND */, &mask, 8 * sizeof(mask), 0)) {
		perror("nhmem: fill");
		return -1;
	}
	madvise(p, len, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
	if (madvise(p, len, 23 /* MADV_POPULATE_WRITE */))
		touch(p, len);
	return 0;
}

static int fill(char **argv)
{
	int node = atoi(argv[2]);
	long target = strtol(argv[3], NULL, 0);
	/*
	 * In chunks, reading the node's free pages between them: the page tables and per-CPU page
	 * lists the allocations take come off the same count, so a fill computed up front ends
	 * hundreds of pages off. THP chunks (2 MiB each, populated by MADV_POPULATE_WRITE, Linux
	 * 5.14) while more than 16 MiB remain: a gigabyte in seconds under TCG; then base pages,
	 * which do not stall in direct compaction as a THP request near the watermarks does.
	 */
	for (int rounds = 0; rounds < 10000; rounds++) {
		long free = node_free_pages(node);
		if (free < 0) {
			fprintf(stderr, "nhmem: fill: node %d not in /proc/zoneinfo\n", node);
			return 1;
		}
		if (free <= target) {
			printf("filled %d free %ld\n", getpid(), free);
			fflush(stdout);
			for (;;)
				pause();
		}
		long want = free - target;
		int huge = want > 4096;
		size_t chunk = huge ? (size_t)(want / 2) & ~511UL : (size_t)(want > 256 ? want / 2 : want);
		if (fill_chunk(node, chunk ? chunk : 1, huge))
			return 1;
	}
	fprintf(stderr, "nhmem: fill: node %d did not come down to %ld free pages\n", node, target);
	return 1;
}

int main(int argc, char **argv)
{
	if (argc >= 3 && !strcmp(argv[1], "hold"))
		return hold(argc, argv);
	if (argc == 5 && !strcmp(argv[1], "pagemap"))
		return pagemap(argv);
	if (argc == 5 && !strcmp(argv[1], "nodes"))
		return nodes(argv);
	if (argc == 4 && !strcmp(argv[1], "fill"))
		return fill(argv);
	fprintf(stderr, "usage: nhmem hold MIB [thp] [node N] | fill NODE FREE | pagemap PID START LEN | nodes PID START LEN\n");
	return 2;
}
