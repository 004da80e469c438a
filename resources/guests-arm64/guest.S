// Freestanding arm64 test guest for vpmu-vmm's aarch64 backend (docs/GUESTS.md, "arm64").
// An arm64 Linux Image header makes it bootable exactly like a kernel. It prints a line on
// the 16550 at 0x40002000, checks that X0 points at a device tree (magic 0xd00dfeed), then
//   POWEROFF=0: stores EXIT_CODE to the debug-exit device at 0x40000000 (status
//               (EXIT_CODE << 1) | 1), or 0x11 (status 35) when X0 is not a device tree;
//   POWEROFF=1: calls PSCI SYSTEM_OFF (hvc #0, x0 = 0x84000008): status 0.
// With SPIN=1 it spins after the first two lines instead (silent, never ends: for the
// VMM's silence watchdog).
// With FUZZ=N (> 0) it first makes N loads/stores of 1, 2, 4 or 8 bytes (xorshift64-chosen,
// 8-byte aligned) at 0x40001000..0x40005000 (an empty window, the UART, where virtio-mmio
// devices go, another empty window; the debug-exit page is left alone), then exits as above
// without printing (the UART may be in any state by then).
// Build: resources/guests-arm64/build.sh (aarch64-linux-gnu-as/ld/objcopy).

	.equ	UART, 0x40002000
	.equ	DEBUG_EXIT, 0x40000000
	.equ	PSCI_SYSTEM_OFF, 0x84000008

	.text
	.globl	_start
_start:
	b	entry			// code0: branch over the header
	.long	0			// code1
	.quad	0			// text_offset
	.quad	image_end - _start	// image_size
	.quad	0xa			// flags: little endian, 4K pages, anywhere
	.quad	0, 0, 0			// res2..res4
	.ascii	"ARM\x64"		// magic
	.long	0			// res5

entry:
	mov	x19, x0			// the device tree
	ldr	x20, =UART
	adr	x1, hello
	bl	puts
	ldr	w2, [x19]		// fdt_header.magic, big endian 0xd00dfeed
	ldr	w3, =0xedfe0dd0
	cmp	w2, w3
	b.ne	bad_fdt
	adr	x1, fdt_ok
	bl	puts
.if SPIN
spin:	b	spin			// SPIN=1: silent from here on, never ends (the watchdog test)
.endif
.if FUZZ
	adr	x1, fuzz_msg
	bl	puts
	ldr	x21, =0x9e3779b97f4a7c15	// xorshift64 state
	ldr	x22, =FUZZ			// iterations
	ldr	x23, =0x40001000		// window base
fuzz_loop:
	eor	x21, x21, x21, lsl #13
	eor	x21, x21, x21, lsr #7
	eor	x21, x21, x21, lsl #17
	and	x24, x21, #0x3ff8
	add	x24, x24, x23			// address
	lsr	x25, x21, #32
	and	x25, x25, #7			// operation
	cmp	x25, #0
	b.ne	1f
	ldrb	w26, [x24]
	b	9f
1:	cmp	x25, #1
	b.ne	1f
	ldrh	w26, [x24]
	b	9f
1:	cmp	x25, #2
	b.ne	1f
	ldr	w26, [x24]
	b	9f
1:	cmp	x25, #3
	b.ne	1f
	ldr	x26, [x24]
	b	9f
1:	cmp	x25, #4
	b.ne	1f
	strb	w21, [x24]
	b	9f
1:	cmp	x25, #5
	b.ne	1f
	strh	w21, [x24]
	b	9f
1:	cmp	x25, #6
	b.ne	1f
	str	w21, [x24]
	b	9f
1:	str	x21, [x24]
9:	subs	x22, x22, #1
	b.ne	fuzz_loop
	mov	w4, #EXIT_CODE
	ldr	x5, =DEBUG_EXIT
	str	w4, [x5]
	b	hang
.endif
.if POWEROFF
	adr	x1, off_msg
	bl	puts
	ldr	x0, =PSCI_SYSTEM_OFF
	hvc	#0
.else
	adr	x1, exit_msg
	bl	puts
	mov	w4, #EXIT_CODE
	ldr	x5, =DEBUG_EXIT
	str	w4, [x5]
.endif
hang:
	wfi
	b	hang

bad_fdt:
	adr	x1, fdt_bad
	bl	puts
	mov	w4, #0x11
	ldr	x5, =DEBUG_EXIT
	str	w4, [x5]
	b	hang

// puts: x1 = NUL-terminated string, x20 = UART base. Waits for LSR.THRE (bit 5).
puts:
	ldrb	w2, [x1], #1
	cbz	w2, 2f
1:	ldrb	w3, [x20, #5]
	tbz	w3, #5, 1b
	strb	w2, [x20]
	b	puts
2:	ret

hello:	.asciz	"VPMU-ARM64-GUEST: hello from EL1\n"
fdt_ok:	.asciz	"VPMU-ARM64-GUEST: x0 points at a device tree\n"
fdt_bad:	.asciz	"VPMU-ARM64-GUEST: x0 is not a device tree\n"
exit_msg:	.asciz	"VPMU-ARM64-GUEST: debug-exit\n"
off_msg:	.asciz	"VPMU-ARM64-GUEST: PSCI SYSTEM_OFF\n"
fuzz_msg:	.asciz	"VPMU-ARM64-GUEST: MMIO fuzz\n"
	.ltorg
	.balign	8
image_end:
