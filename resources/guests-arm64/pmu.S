// Freestanding arm64 PMU conformance guest for vpmu-vmm (docs/GUESTS.md, "arm64"), booted
// with `vpmu-vmm run --kernel pmu.img --cpus 1`. It prints TAP-style lines and values on the
// 16550 at 0x40002000; tests/linux_arm64.rs compares the values with the policy in force.
//
// ID_AA64DFR0_EL1.PMUVer == 0 (`--pmu off`: KVM hides PMUv3 without KVM_ARM_VCPU_PMU_V3):
//   every PMU register access must UNDEF (5 tried; the sync handler skips them and counts):
//   "ok 1 - PMU registers UNDEF without a PMU (5/5)".
// Otherwise (`--pmu emulated`): prints PMCR_EL0 (N), PMCEID0/1_EL0; counts INST_RETIRED
//   (0x08) on counter 0, CPU_CYCLES (0x11) on counter 1 and the cycle counter over a
//   100000-iteration loop ("COUNT-INST", "COUNT-CYCLES", "COUNT-CCNT"); then lets counter 2
//   (0x08, preset 4096 before its 32-bit overflow, PMINTENSET bit 2) overflow with IRQs
//   unmasked and the GICv3 set up for PPI 7 = INTID 23: "PMU-IRQ <INTID>", or "PMU-IRQ none"
//   and DIAG-* lines (PMOVSSET, GICR_ISPENDR0, ISR_EL1, GICD_CTLR, ...) when it did not come
//   within 20M loop iterations. (Under the TCG rig the interrupt arrives ~2.6M instructions
//   after the overflow: L1 sees its own PMU interrupt late; a 1M-iteration wait missed it.)
//   An unexpected exception prints "not ok" and exits with 1.
// Both: "BENCH-*" ticks of CNTVCT_EL0 for 1000 reads of PMCCNTR_EL0 (trapped to KVM) and of
//   CNTVCT_EL0 (not trapped), with CNTFRQ_EL0. Ends with debug-exit 42 (status 85).
// Build: resources/guests-arm64/build.sh.

	.equ	UART, 0x40002000
	.equ	DEBUG_EXIT, 0x40000000
	.equ	GICD, 0x3fff0000
	.equ	GICR, 0x3ffd0000		// RD_base of vCPU 0 with 1 vCPU
	.equ	GICR_SGI, GICR + 0x10000
	.equ	PMU_INTID, 23

	.text
	.globl	_start
_start:
	b	entry
	.long	0
	.quad	0			// text_offset
	.quad	image_end - _start	// image_size
	.quad	0xa
	.quad	0, 0, 0
	.ascii	"ARM\x64"
	.long	0

entry:
	ldr	x0, =0x80100000
	mov	sp, x0
	ldr	x20, =UART
	adr	x0, vectors
	msr	vbar_el1, x0
	isb
	mov	x28, #0			// UNDEF not expected
	mov	x27, #0			// UNDEFs seen
	mov	x26, #0			// PMU IRQ seen
	mov	x25, #0			// its INTID
	mov	x24, #0			// IRQ entries
	adr	x1, hello
	bl	puts

	mrs	x0, id_aa64dfr0_el1
	ubfx	x19, x0, #8, #4
	adr	x1, s_pmuver
	mov	x0, x19
	bl	putval
	cbnz	x19, emulated

	// ---- no PMU: every access UNDEFs
	mov	x28, #1
	mrs	x0, pmcr_el0
	mrs	x0, pmccntr_el0
	mrs	x0, pmceid0_el0
	mov	x0, #1
	msr	pmcntenset_el0, x0
	mrs	x0, pmevcntr0_el0
	mov	x28, #0
	adr	x1, s_undefs
	mov	x0, x27
	bl	putval
	cmp	x27, #5
	b.ne	fail_undef
	adr	x1, ok_undef
	bl	puts
	b	bench

fail_undef:
	adr	x1, notok_undef
	bl	puts
	b	fail

emulated:
	adr	x1, s_pmcr
	mrs	x0, pmcr_el0
	bl	putval
	adr	x1, s_pmceid0
	mrs	x0, pmceid0_el0
	bl	putval
	adr	x1, s_pmceid1
	mrs	x0, pmceid1_el0
	bl	putval

	mov	x0, #0xffffffff
	msr	pmcntenclr_el0, x0
	msr	pmintenclr_el1, x0
	msr	pmovsclr_el0, x0
	mov	x0, #0x08		// INST_RETIRED, EL0 + EL1
	msr	pmevtyper0_el0, x0
	mov	x0, #0x11		// CPU_CYCLES
	msr	pmevtyper1_el0, x0
	msr	pmccfiltr_el0, xzr
	mov	x0, #0x47		// LC | C | P | E
	msr	pmcr_el0, x0
	isb
	ldr	x2, =0x80000003		// cycle counter, counters 0 and 1
	msr	pmcntenset_el0, x2
	isb
	ldr	x1, =100000
1:	subs	x1, x1, #1
	b.ne	1b
	msr	pmcntenclr_el0, x2
	isb
	adr	x1, s_inst
	mrs	x0, pmevcntr0_el0
	bl	putval
	adr	x1, s_cyc
	mrs	x0, pmevcntr1_el0
	bl	putval
	adr	x1, s_ccnt
	mrs	x0, pmccntr_el0
	bl	putval

	// ---- overflow interrupt through the GICv3 (PPI 7 = INTID 23)
	ldr	x1, =GICD
	mov	w0, #0x12		// ARE | EnableGrp1
	str	w0, [x1]
	ldr	x1, =GICR
	ldr	w0, [x1, #0x14]		// GICR_WAKER
	bic	w0, w0, #2		// ProcessorSleep = 0
	str	w0, [x1, #0x14]
2:	ldr	w0, [x1, #0x14]
	tbnz	w0, #2, 2b		// ChildrenAsleep
	ldr	x1, =GICR_SGI
	ldr	w0, [x1, #0x80]		// GICR_IGROUPR0: INTID 23 in group 1
	orr	w0, w0, #(1 << PMU_INTID)
	str	w0, [x1, #0x80]
	mov	w0, #0x80
	strb	w0, [x1, #(0x400 + PMU_INTID)]	// priority
	mov	w0, #(1 << PMU_INTID)
	str	w0, [x1, #0x100]	// GICR_ISENABLER0
	mov	x0, #1
	msr	icc_sre_el1, x0
	isb
	mov	x0, #0xff
	msr	icc_pmr_el1, x0
	mov	x0, #1
	msr	icc_igrpen1_el1, x0
	isb
	mov	x0, #0x08
	msr	pmevtyper2_el0, x0
	ldr	x0, =0xfffff000
	msr	pmevcntr2_el0, x0
	mov	x0, #4
	msr	pmintenset_el1, x0
	msr	daifclr, #2
	msr	pmcntenset_el0, x0
	isb
	ldr	x1, =20000000
3:	cbnz	x26, 4f
	subs	x1, x1, #1
	b.ne	3b
4:	msr	daifset, #2
	cbnz	x26, 9f
	adr	x1, s_ispend
	ldr	x2, =GICR_SGI
	ldr	w0, [x2, #0x200]
	bl	putval
	adr	x1, s_isr
	mrs	x0, isr_el1
	bl	putval
	adr	x1, s_gicd
	ldr	x2, =GICD
	ldr	w0, [x2]
	bl	putval
	adr	x1, s_typer
	ldr	x2, =GICR
	ldr	x0, [x2, #8]
	bl	putval
	adr	x1, s_isen
	ldr	x2, =GICR_SGI
	ldr	w0, [x2, #0x100]
	bl	putval
	adr	x1, s_hppi
	mrs	x0, icc_hppir1_el1
	bl	putval
	adr	x1, s_inten
	mrs	x0, pmintenset_el1
	bl	putval
	adr	x1, s_pmcr
	mrs	x0, pmcr_el0
	bl	putval
9:	mov	x0, #4
	msr	pmcntenclr_el0, x0
	msr	pmintenclr_el1, x0
	isb
	cbz	x26, 5f
	adr	x1, s_irq
	mov	x0, x25
	bl	putval
	b	bench
5:	adr	x1, s_noirq
	bl	puts
	adr	x1, s_ovs
	mrs	x0, pmovsset_el0
	bl	putval
	adr	x1, s_ispend
	ldr	x2, =GICR_SGI
	ldr	w0, [x2, #0x200]
	bl	putval
	adr	x1, s_isr
	mrs	x0, isr_el1
	bl	putval
	adr	x1, s_irqs
	mov	x0, x24
	bl	putval
	adr	x1, s_iar
	mov	x0, x25
	bl	putval

bench:
	adr	x1, s_frq
	mrs	x0, cntfrq_el0
	bl	putval
	cbz	x19, 7f			// no PMU: only the untrapped counter
	isb
	mrs	x10, cntvct_el0
	mov	x1, #1000
6:	mrs	x0, pmccntr_el0
	subs	x1, x1, #1
	b.ne	6b
	isb
	mrs	x11, cntvct_el0
	adr	x1, s_bpm
	sub	x0, x11, x10
	bl	putval
7:	isb
	mrs	x10, cntvct_el0
	mov	x1, #1000
8:	mrs	x0, cntvct_el0
	subs	x1, x1, #1
	b.ne	8b
	isb
	mrs	x11, cntvct_el0
	adr	x1, s_bcv
	sub	x0, x11, x10
	bl	putval
	adr	x1, s_done
	bl	puts
	mov	w4, #42
	ldr	x5, =DEBUG_EXIT
	str	w4, [x5]
hang:
	wfi
	b	hang

fail:
	mov	w4, #1
	ldr	x5, =DEBUG_EXIT
	str	w4, [x5]
	b	hang

// puts: x1 = NUL-terminated string, x20 = UART. Clobbers x1..x3.
puts:
	ldrb	w2, [x1], #1
	cbz	w2, 2f
1:	ldrb	w3, [x20, #5]
	tbz	w3, #5, 1b
	strb	w2, [x20]
	b	puts
2:	ret

// putc: w2 = character. Clobbers x3.
putc:
1:	ldrb	w3, [x20, #5]
	tbz	w3, #5, 1b
	strb	w2, [x20]
	ret

// putval: prints the string at x1, " 0x", x0 as 16 hex digits, "\n". Clobbers x0..x6, x30.
putval:
	mov	x6, x30
	mov	x4, x0
	bl	puts
	mov	w2, #' '
	bl	putc
	mov	w2, #'0'
	bl	putc
	mov	w2, #'x'
	bl	putc
	mov	x5, #60
1:	lsr	x0, x4, x5
	and	x0, x0, #0xf
	cmp	x0, #10
	add	x2, x0, #'0'
	add	x0, x0, #('a' - 10)
	csel	x2, x0, x2, hs
	bl	putc
	subs	x5, x5, #4
	b.ge	1b
	mov	w2, #'\n'
	bl	putc
	mov	x30, x6
	ret

sync_handler:
	cbz	x28, unexpected
	add	x27, x27, #1
	mrs	x9, elr_el1
	add	x9, x9, #4
	msr	elr_el1, x9
	eret
unexpected:
	adr	x1, notok_sync
	mrs	x0, esr_el1
	bl	putval
	b	fail

irq_handler:
	add	x24, x24, #1
	mrs	x9, icc_iar1_el1
	mov	x25, x9
	cmp	x9, #PMU_INTID
	b.ne	1f
	mov	x26, #1
	mov	x10, #0xffffffff
	msr	pmovsclr_el0, x10
	mov	x10, #4
	msr	pmintenclr_el1, x10
	isb
1:	msr	icc_eoir1_el1, x9
	isb
	eret

	.balign	2048
vectors:
	.rept	4			// current EL with SP0
	b	unexpected
	.balign	0x80
	.endr
	b	sync_handler		// current EL with SPx: synchronous
	.balign	0x80
	b	irq_handler		// IRQ
	.balign	0x80
	b	unexpected		// FIQ
	.balign	0x80
	b	unexpected		// SError
	.balign	0x80
	.rept	8			// lower EL
	b	unexpected
	.balign	0x80
	.endr

hello:	.asciz	"VPMU-ARM64-PMU: conformance guest\n"
s_pmuver:	.asciz	"PMU-PMUVER"
s_undefs:	.asciz	"PMU-UNDEFS"
ok_undef:	.asciz	"ok 1 - PMU registers UNDEF without a PMU (5/5)\n"
notok_undef:	.asciz	"not ok 1 - PMU registers UNDEF without a PMU\n"
notok_sync:	.asciz	"not ok - unexpected synchronous exception, ESR_EL1"
s_pmcr:	.asciz	"PMU-PMCR"
s_pmceid0:	.asciz	"PMU-PMCEID0"
s_pmceid1:	.asciz	"PMU-PMCEID1"
s_inst:	.asciz	"COUNT-INST"
s_cyc:	.asciz	"COUNT-CYCLES"
s_ccnt:	.asciz	"COUNT-CCNT"
s_irq:	.asciz	"PMU-IRQ"
s_noirq:	.asciz	"PMU-IRQ none\n"
s_ovs:	.asciz	"DIAG-PMOVSSET"
s_ispend:	.asciz	"DIAG-GICR-ISPENDR0"
s_isr:	.asciz	"DIAG-ISR_EL1"
s_irqs:	.asciz	"DIAG-IRQ-ENTRIES"
s_iar:	.asciz	"DIAG-LAST-IAR"
s_gicd:	.asciz	"DIAG-GICD_CTLR"
s_typer:	.asciz	"DIAG-GICR_TYPER"
s_isen:	.asciz	"DIAG-GICR_ISENABLER0"
s_hppi:	.asciz	"DIAG-HPPIR1"
s_inten:	.asciz	"DIAG-PMINTENSET"
s_frq:	.asciz	"BENCH-CNTFRQ"
s_bpm:	.asciz	"BENCH-PMCCNTR-1000-TICKS"
s_bcv:	.asciz	"BENCH-CNTVCT-1000-TICKS"
s_done:	.asciz	"VPMU-ARM64-PMU: done\n"
	.ltorg
	.balign	8
image_end:
