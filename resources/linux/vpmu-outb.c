/*
 * vpmu-outb PORT VALUE : writes one byte to an x86 I/O port (ioperm + outb).
 * The Debian cloud kernel has no /dev/port, so the guest's /init uses this for:
 *   vpmu-outb 0x64 0xfe   i8042 reset        (vpmu-vmm exits 0)
 *   vpmu-outb 0xf4 N      debug-exit port    (vpmu-vmm exits (N << 1) | 1)
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/io.h>

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: vpmu-outb PORT VALUE\n");
		return 2;
	}
	unsigned long port = strtoul(argv[1], NULL, 0);
	unsigned long value = strtoul(argv[2], NULL, 0);
	if (port > 0xffff || value > 0xff) {
		fprintf(stderr, "vpmu-outb: port or value out of range\n");
		return 2;
	}
	if (ioperm(port, 1, 1) != 0) {
		perror("vpmu-outb: ioperm");
		return 1;
	}
	outb((unsigned char)value, (unsigned short)port);
	return 0;
}
