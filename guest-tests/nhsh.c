/*
 * nhsh: root's login shell in the numa-harness guest: drop the task mempolicy, then exec /bin/sh.
 *
 * dropbear runs with a task MPOL_BIND on every memory node (see images/init), which keeps the
 * NUMA scanner off the harness's own SSH server. Every command it runs starts here, so
 * workloads get the default policy back and NUMA balancing applies to them as on any machine.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	(void)argc;
	/* MPOL_DEFAULT = 0: the task policy goes back to local allocation with MPOL_F_MOF. */
	if (syscall(SYS_set_mempolicy, 0, NULL, 0UL)) {
		perror("nhsh: set_mempolicy");
		return 126;
	}
	/* busybox picks the applet from argv[0]; a leading '-' (login shell) is kept. */
	argv[0] = argv[0][0] == '-' ? "-sh" : "sh";
	execv("/bin/sh", argv);
	perror("nhsh: exec /bin/sh");
	return 127;
}
