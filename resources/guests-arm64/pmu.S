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
//   Before those: the hostile-guest checks (issue #12, block "adv"): TAP lines "ok N - ..." /
//   "not ok N - ..." with the values judged as "ADV-* 0x..." lines, under whatever policy is
//   in force (A = an allowed counting event, D = a denied one, from PMCEID0): PMSELR_EL0 +
//   PMXEVTYPER_EL0/PMXEVCNTR_EL0 (D stays 0, A counts, a running counter switched to D
//   stops); a chained pair (even = D: neither half counts; even = A: the carry reaches the
//   CHAIN counter); PMCR_EL0.P|C (all zeroed, then A counts again from 0, D stays 0);
//   PMCCNTR_EL0 under PMCCFILTR_EL0 = 0/0x08/NSH and PMSELR_EL0 = 31 + PMXEVTYPER_EL0 (counts
//   iff 0x11 is allowed); SW_INCR (5 PMSWINC_EL0 writes count 5: KVM does not filter it);
//   EL0 with PMUSERENR_EL0 (EL0 runs with the MMU off; PMCR_EL0 reads with EN / 0 / CR
//   only; counter reads the rig's QEMU answers itself: "# TODO" lines, not counted as
//   failures). "ADV-TAP-FAILED 0x0" = all passed. docs/PMU-MODEL.md, "A hostile guest".
// Both: "BENCH-*" ticks of CNTVCT_EL0 for 1000 reads of PMCCNTR_EL0 (trapped to KVM) and of
//   CNTVCT_EL0 (not trapped), with CNTFRQ_EL0. Ends with debug-exit 42 (status 85).
// Build: resources/guests-arm64/build.sh.

	.equ	UART, 0x40002000
	.equ	DEBUG_EXIT, 0x40000000
	.equ	GICD, 0x3fff0000
	.equ	GICR, 0x3ffd0000		// RD_base of vCPU 0 with 1 vCPU
	.equ	GICR_SGI, GICR + 0x10000
	.equ	PMU_INTID, 23
	.equ	LOOP_ITERS, 100000
	.equ	LOOP_INSNS, 2 * LOOP_ITERS	// spin: LOOP_ITERS x (subs, b.ne)
	.equ	NO_EVENT, 0xfff			// adv: no denied counting event
	.equ	SENTINEL, 0x5e47e1a15e47e1a1	// el0_run: "not read at EL0"

// PUTV "NAME", reg: prints "NAME 0x<reg>" (putval). Clobbers x0..x6, x30.
.macro	PUTV text, reg
	.pushsection .text, 1
.Lpv\@:	.asciz	"\text"
	.popsection
	mov	x0, \reg
	adr	x1, .Lpv\@
	bl	putval
.endm
// TAP "TEXT", reg: "ok N - TEXT" when reg != 0, else "not ok N - TEXT" (tap).
.macro	TAP text, reg
	.pushsection .text, 1
.Ltap\@:	.asciz	"\text"
	.popsection
	mov	x0, \reg
	adr	x1, .Ltap\@
	bl	tap
.endm
// TAPTODO "TEXT # TODO why", reg: the same for a check the rig cannot pass (tap_todo).
.macro	TAPTODO text, reg
	.pushsection .text, 1
.Ltodo\@:	.asciz	"\text"
	.popsection
	mov	x0, \reg
	adr	x1, .Ltodo\@
	bl	tap_todo
.endm
// EXPECT cond: x7 &= the condition of the last compare.
.macro	EXPECT cond
	csel	x7, x7, xzr, \cond
.endm

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

	// ---- hostile-guest checks (issue #12): every register path to a counter. Each check
	// prints "ok N - TEXT" or "not ok N - TEXT" (tap) and the values it judged (PUTV).
	// A (x21) = an allowed counting event, D (x22) = a denied one, both read from PMCEID0,
	// which KVM ANDs with the filter (kvm_pmu_get_pmceid): under QEMU only 0x08 and 0x11
	// count, so A = 0x11 (else 0x08), D = 0x08 (else 0x11; NO_EVENT when both are allowed:
	// the checks that need a denied event are then left out). x24 = cycle counter allowed
	// (PMCEID0 bit 0x11: KVM filters PMCCNTR_EL0 as 0x11, kvm_pmu_create_perf_event).
adv:
	mov	x23, #0			// TAP number
	mov	x29, #0			// TAP failures
	mrs	x0, pmceid0_el0
	ubfx	x24, x0, #0x11, #1
	mov	x21, #0x11
	tbnz	x0, #0x11, 1f
	mov	x21, #0x08
1:	mov	x22, #0x08
	tbz	x0, #0x08, 2f
	mov	x22, #0x11
	tbz	x0, #0x11, 2f
	mov	x22, #NO_EVENT
2:	PUTV	"ADV-A-EVENT", x21
	PUTV	"ADV-D-EVENT", x22
	PUTV	"ADV-CYCLE-ALLOWED", x24

	// -- 1. PMXEVTYPER_EL0 / PMXEVCNTR_EL0 through PMSELR_EL0 = 3 (access_pmu_evtyper:
	// idx = PMSELR_EL0.SEL -> kvm_pmu_set_counter_event_type -> kvm_pmu_create_perf_event,
	// the same filter check as PMEVTYPER3_EL0).
	bl	quiesce
	cmp	x22, #NO_EVENT
	b.eq	3f
	mov	x0, #3
	msr	pmselr_el0, x0
	isb
	msr	pmxevtyper_el0, x22
	msr	pmxevcntr_el0, xzr
	isb
	mrs	x10, pmxevtyper_el0
	mov	x0, #8
	msr	pmcntenset_el0, x0
	isb
	bl	spin
	mov	x0, #8
	msr	pmcntenclr_el0, x0
	isb
	mrs	x11, pmxevcntr_el0
	mrs	x12, pmevcntr3_el0
	PUTV	"ADV-XEV-DENIED-TYPER", x10
	PUTV	"ADV-XEV-DENIED", x11
	mov	x7, #1
	cmp	x10, x22
	EXPECT	eq
	cmp	x11, #0
	EXPECT	eq
	cmp	x12, #0
	EXPECT	eq
	TAP	"PMSELR_EL0=3 + PMXEVTYPER_EL0 = the denied event: reads back, counter 3 stays 0", x7
3:	mov	x0, #3
	msr	pmselr_el0, x0
	isb
	msr	pmxevtyper_el0, x21
	msr	pmxevcntr_el0, xzr
	mov	x0, #8
	msr	pmcntenset_el0, x0
	isb
	bl	spin
	mrs	x11, pmxevcntr_el0	// still running
	PUTV	"ADV-XEV-ALLOWED", x11
	mov	x0, x11
	bl	in_range
	mov	x7, x0
	TAP	"PMSELR_EL0=3 + PMXEVTYPER_EL0 = the allowed event: counter 3 counts", x7
	cmp	x22, #NO_EVENT
	b.eq	4f
	// a running counter reprogrammed to the denied event through PMXEVTYPER_EL0
	mrs	x11, pmxevcntr_el0
	msr	pmxevtyper_el0, x22
	isb
	bl	spin
	mrs	x12, pmxevcntr_el0
	sub	x10, x12, x11
	PUTV	"ADV-XEV-SWITCHED-DELTA", x10
	mov	x7, #1
	ldr	x0, =(LOOP_INSNS / 4)
	cmp	x10, x0			// unsigned: also catches a counter that went down
	EXPECT	lo
	TAP	"a running counter switched to the denied event through PMXEVTYPER_EL0 stops counting", x7
4:	bl	quiesce

	// -- 2. chained counters: pair 0/1, odd = CHAIN (0x1E), even preset 0xffff0000 so
	// that the carry reaches the odd counter within the loop. KVM 6.1: the pair is one
	// 64-bit perf event created from the even counter's event and filtered on it
	// (kvm_pmu_update_pmc_chained, kvm_pmu_create_perf_event via
	// kvm_pmu_get_canonical_pmc); from 6.2 the odd counter counts the even counter's
	// overflows (kvm_pmu_counter_increment) and CHAIN itself gets no perf event. Either
	// way: a denied even event counts in neither half; CHAIN is never filtered itself.
	cmp	x22, #NO_EVENT
	b.eq	5f
	msr	pmevtyper0_el0, x22
	bl	chain_run
	PUTV	"ADV-CHAIN-DENIED-LO", x11
	PUTV	"ADV-CHAIN-DENIED-HI", x12
	mov	x7, #1
	ldr	x0, =0xffff0000
	cmp	x11, x0
	EXPECT	eq
	cmp	x12, #0
	EXPECT	eq
	TAP	"chain: even counter = the denied event, odd = CHAIN: neither half counts", x7
5:	msr	pmevtyper0_el0, x21
	bl	chain_run
	PUTV	"ADV-CHAIN-ALLOWED-LO", x11
	PUTV	"ADV-CHAIN-ALLOWED-HI", x12
	mov	x7, #1
	cmp	x12, #1
	EXPECT	eq
	ldr	x0, =(LOOP_INSNS * 3)
	cmp	x11, x0
	EXPECT	lo
	TAP	"chain: even counter = the allowed event, odd = CHAIN: the carry reaches the odd counter", x7
	msr	pmevtyper1_el0, xzr
	bl	quiesce

	// -- 3. PMCR_EL0.P and .C (kvm_pmu_handle_pmcr -> kvm_pmu_set_counter_value(i, 0) ->
	// kvm_pmu_create_perf_event: the filter is applied again). Counter 2 = A, counter 3 =
	// D preset to 0x5a5, and the cycle counter.
	cmp	x22, #NO_EVENT
	b.eq	6f
	msr	pmevtyper2_el0, x21
	msr	pmevtyper3_el0, x22
	msr	pmccfiltr_el0, xzr
	msr	pmevcntr2_el0, xzr
	mov	x0, #0x5a5
	msr	pmevcntr3_el0, x0
	msr	pmccntr_el0, xzr
	bl	reset_run
	PUTV	"ADV-RESET-BEFORE-ALLOWED", x11
	PUTV	"ADV-RESET-BEFORE-DENIED", x12
	PUTV	"ADV-RESET-BEFORE-CCNT", x13
	mov	x7, #1
	mov	x0, x11
	bl	in_range
	cmp	x0, #1
	EXPECT	eq
	cmp	x12, #0x5a5
	EXPECT	eq
	bl	ccnt_ok
	mov	x0, #0x47		// LC | C | P | E
	msr	pmcr_el0, x0
	isb
	mrs	x11, pmevcntr2_el0
	mrs	x12, pmevcntr3_el0
	mrs	x13, pmccntr_el0
	PUTV	"ADV-RESET-ZERO-ALLOWED", x11
	PUTV	"ADV-RESET-ZERO-DENIED", x12
	PUTV	"ADV-RESET-ZERO-CCNT", x13
	orr	x0, x11, x12
	orr	x0, x0, x13
	cmp	x0, #0
	EXPECT	eq
	TAP	"PMCR_EL0.P|C zeroes the allowed, the denied (preset 0x5a5, never counted) and the cycle counter", x7
	bl	reset_run
	PUTV	"ADV-RESET-AFTER-ALLOWED", x11
	PUTV	"ADV-RESET-AFTER-DENIED", x12
	PUTV	"ADV-RESET-AFTER-CCNT", x13
	mov	x7, #1
	mov	x0, x11
	bl	in_range
	cmp	x0, #1
	EXPECT	eq
	cmp	x12, #0
	EXPECT	eq
	bl	ccnt_ok
	TAP	"after PMCR_EL0.P|C the allowed counter counts again from 0, the denied one stays 0", x7
6:	bl	quiesce

	// -- 4. the cycle counter however PMCCFILTR_EL0 is programmed: directly (0, 0x08 in
	// the RES0 event field, NSH) and through PMSELR_EL0 = 31 + PMXEVTYPER_EL0 (0x08, 0x11),
	// which KVM maps to PMCCFILTR_EL0 (access_pmu_evtyper; PMEVTYPER0_EL0 + 31). KVM always
	// filters the cycle counter as 0x11 (kvm_pmu_create_perf_event).
	mov	x7, #1
	msr	pmccfiltr_el0, xzr
	bl	ccnt_run
	PUTV	"ADV-CCFILTR-0", x13
	bl	ccnt_ok
	mov	x0, #0x08
	msr	pmccfiltr_el0, x0
	bl	ccnt_run
	PUTV	"ADV-CCFILTR-08", x13
	bl	ccnt_ok
	mov	x0, #0x08000000		// NSH: count at EL2 too
	msr	pmccfiltr_el0, x0
	bl	ccnt_run
	PUTV	"ADV-CCFILTR-NSH", x13
	bl	ccnt_ok
	cbz	x24, 7f
	TAP	"PMCCFILTR_EL0 = 0, 0x08, NSH: PMCCNTR_EL0 counts (cycle counter allowed)", x7
	b	8f
7:	TAP	"PMCCFILTR_EL0 = 0, 0x08, NSH: PMCCNTR_EL0 stays 0 (cycle counter denied)", x7
8:	mov	x7, #1
	mov	x0, #31
	msr	pmselr_el0, x0
	isb
	mov	x0, #0x08
	msr	pmxevtyper_el0, x0
	isb
	mrs	x10, pmccfiltr_el0
	PUTV	"ADV-XEV31-PMCCFILTR", x10
	bl	ccnt_run
	PUTV	"ADV-XEV31-08", x13
	bl	ccnt_ok
	mov	x0, #31
	msr	pmselr_el0, x0
	isb
	mov	x0, #0x11
	msr	pmxevtyper_el0, x0
	isb
	bl	ccnt_run
	PUTV	"ADV-XEV31-11", x13
	bl	ccnt_ok
	msr	pmccfiltr_el0, xzr
	cbz	x24, 7f
	TAP	"PMSELR_EL0=31 + PMXEVTYPER_EL0 = 0x08, 0x11: PMCCNTR_EL0 counts (cycle counter allowed)", x7
	b	8f
7:	TAP	"PMSELR_EL0=31 + PMXEVTYPER_EL0 = 0x08, 0x11: PMCCNTR_EL0 stays 0 (cycle counter denied)", x7
8:	bl	quiesce

	// -- 5. SW_INCR (0x00) on counter 4: 5 PMSWINC_EL0 writes around the loop. KVM
	// increments SW_INCR counters in kvm_pmu_software_increment without looking at the
	// filter (and kvm_pmu_create_perf_event creates no perf event for 0x00), so they count
	// whatever the policy says; they count nothing but the guest's own writes.
	msr	pmevtyper4_el0, xzr
	msr	pmevcntr4_el0, xzr
	mov	x2, #0x10
	msr	pmcntenset_el0, x2
	isb
	mov	x3, #3
9:	msr	pmswinc_el0, x2
	subs	x3, x3, #1
	b.ne	9b
	bl	spin			// hardware activity: must not reach a SW_INCR counter
	mov	x2, #0x10
	msr	pmswinc_el0, x2
	msr	pmswinc_el0, x2
	msr	pmcntenclr_el0, x2
	isb
	msr	pmswinc_el0, x2		// counter disabled: not counted
	isb
	mrs	x11, pmevcntr4_el0
	mrs	x12, pmceid0_el0
	and	x12, x12, #1
	PUTV	"ADV-SWINC-COUNT", x11
	PUTV	"ADV-SWINC-PMCEID0-BIT0", x12
	mov	x7, #1
	cmp	x11, #5
	EXPECT	eq
	TAP	"SW_INCR: 5 PMSWINC_EL0 writes count 5 whatever the filter (kvm_pmu_software_increment)", x7
	bl	quiesce

	// -- 6. EL0 and PMUSERENR_EL0. el0_run drops to EL0 (MMU off), where el0_read reads
	// PMCR_EL0, PMCCNTR_EL0 and PMEVCNTR0_EL0 (= A), loops, reads the two counters again
	// and returns with svc #0; EL0 accesses that trap are skipped and recorded (lower_sync:
	// x25 = bit i for instruction i of el0_read: 0 PMCR, 1 and 6 PMCCNTR, 2 and 7
	// PMEVCNTR0; x26 = the PMCR read's ESR_EL1). KVM emulates the guest's PMUSERENR_EL0
	// (access_pmuserenr) and checks it in check_pmu_access_disabled, which injects an UNDEF
	// (kvm_inject_undefined: ESR_EL1.EC 0x00); the hardware PMUSERENR_EL0 is all ones while
	// the vCPU is loaded (__activate_traps_common) so that EL0 accesses reach EL2
	// (MDCR_EL2.TPM). Two things of the rig are recorded, not judged (see
	// docs/PMU-MODEL.md): Linux 6.1's perf driver clears the hardware PMUSERENR_EL0 when
	// KVM programs its counters (armv8pmu_start; fixed in 6.4), so right after programming
	// and before the next exit to the VMM EL0 accesses trap straight to EL1 (EC 0x18);
	// and QEMU answers EL0 reads of PMCCNTR/PMEVCNTR itself when the hardware PMUSERENR_EL0
	// CR/ER bits are set (pmreg_access_ccntr, pmreg_access_xevcntr) without checking
	// MDCR_EL2.TPM, so those reads never reach KVM: "# TODO" TAP lines.
	msr	pmccfiltr_el0, xzr
	msr	pmevtyper0_el0, x21
	msr	pmevcntr0_el0, xzr
	msr	pmccntr_el0, xzr
	ldr	x0, =0x80000001
	msr	pmcntenset_el0, x0
	isb
	mov	x0, #1			// EN, at once: no exit since the counters were programmed
	bl	el0_run
	PUTV	"ADV-EL0-SVC-ESR", x17
	PUTV	"ADV-EL0-FRESH-TRAPMASK", x25
	PUTV	"ADV-EL0-FRESH-ESR", x15
	lsr	x0, x17, #26
	mov	x7, #1
	cmp	x0, #0x15
	EXPECT	eq
	TAP	"EL0 code runs with the MMU off and svc #0 returns to EL1 (ESR_EL1.EC 0x15)", x7
	mov	x0, #1			// EN, after the exits of those lines
	bl	el0_run
	PUTV	"ADV-EL0-EN-TRAPMASK", x25
	PUTV	"ADV-EL0-EN-PMCR", x11
	PUTV	"ADV-EL0-EN-CCNT-1", x12
	PUTV	"ADV-EL0-EN-CCNT-2", x13
	PUTV	"ADV-EL0-EN-EVCNT-1", x14
	PUTV	"ADV-EL0-EN-EVCNT-2", x10
	ldr	x0, [sp, #16]
	PUTV	"ADV-EL0-EL1-PMCR", x0
	ldr	x0, [sp]
	PUTV	"ADV-EL0-EN-EL1-CCNT-BEFORE", x0
	ldr	x0, [sp, #8]
	PUTV	"ADV-EL0-EN-EL1-CCNT-AFTER", x0
	mov	x7, #1
	tst	x25, #1
	EXPECT	eq
	ldr	x0, [sp, #16]
	cmp	x11, x0
	EXPECT	eq
	TAP	"EL0 reads PMCR_EL0 with PMUSERENR_EL0.EN: no trap, the value EL1 reads", x7
	mov	x7, #1
	mov	x0, #0xc6		// PMCCNTR and PMEVCNTR0 reads
	tst	x25, x0
	EXPECT	eq
	TAP	"EL0 reads PMCCNTR_EL0 and PMEVCNTR0_EL0 with PMUSERENR_EL0.EN: no trap", x7
	// KVM's view: EL1 reads of PMCCNTR_EL0 before and after bound the EL0 reads.
	mov	x7, #1
	ldr	x0, [sp]
	cmp	x12, x0
	EXPECT	hs
	cmp	x13, x12
	EXPECT	hs
	ldr	x0, [sp, #8]
	cmp	x0, x13
	EXPECT	hs
	cbz	x24, 7f
	cmp	x13, x12
	EXPECT	hi
7:	TAPTODO	"EL0 PMCCNTR_EL0 reads lie between EL1's reads around them (KVM's counter) # TODO rig: QEMU answers EL0 counter reads itself", x7
	mov	x0, #0			// PMUSERENR_EL0 = 0
	bl	el0_run
	PUTV	"ADV-EL0-OFF-TRAPMASK", x25
	PUTV	"ADV-EL0-OFF-PMCR-ESR", x26
	PUTV	"ADV-EL0-OFF-CCNT-1", x12
	PUTV	"ADV-EL0-OFF-CCNT-2", x13
	mov	x7, #1
	tst	x25, #1
	EXPECT	ne
	lsr	x0, x26, #26
	cmp	x0, #0
	EXPECT	eq
	TAP	"EL0 PMCR_EL0 read with PMUSERENR_EL0 = 0 enters EL1 as KVM's UNDEF (ESR_EL1.EC 0x00)", x7
	mov	x7, #1
	mov	x1, #0x42		// both PMCCNTR reads
	and	x0, x25, x1
	cmp	x0, x1
	EXPECT	eq
	TAPTODO	"EL0 PMCCNTR_EL0 reads with PMUSERENR_EL0 = 0 trap to EL1 # TODO rig: QEMU answers EL0 counter reads itself", x7
	mov	x0, #4			// CR only: PMCR_EL0 needs EN
	bl	el0_run
	PUTV	"ADV-EL0-CR-TRAPMASK", x25
	PUTV	"ADV-EL0-CR-PMCR-ESR", x26
	mov	x7, #1
	tst	x25, #1
	EXPECT	ne
	lsr	x0, x26, #26
	cmp	x0, #0
	EXPECT	eq
	TAP	"EL0 PMCR_EL0 read with PMUSERENR_EL0.CR only is KVM's UNDEF (EN needed)", x7
	msr	pmuserenr_el0, xzr
	bl	quiesce
	PUTV	"ADV-TAP-FAILED", x29
	// leave counters 1, 3, 4 as after reset (typer 0, value 0): the exit-time audit then
	// sees the programming of the checks below (c0, c1, c2, ccnt) only
	msr	pmevtyper1_el0, xzr
	msr	pmevtyper3_el0, xzr
	msr	pmevtyper4_el0, xzr
	msr	pmevcntr1_el0, xzr
	msr	pmevcntr3_el0, xzr
	msr	pmevcntr4_el0, xzr
	isb
	mov	x24, #0			// the IRQ check's registers (see entry)
	mov	x25, #0
	mov	x26, #0

	// ---- counts, the overflow interrupt (the first checks of this guest)

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

// ---- helpers of the hostile-guest checks (adv)

// quiesce: every counter disabled, overflow flags and interrupt enables cleared,
// PMCR_EL0 = LC | E, PMSELR_EL0 = 0. Clobbers x0.
quiesce:
	mov	x0, #0xffffffff
	msr	pmcntenclr_el0, x0
	msr	pmintenclr_el1, x0
	msr	pmovsclr_el0, x0
	mov	x0, #0x41		// LC | E
	msr	pmcr_el0, x0
	msr	pmselr_el0, xzr
	isb
	ret

// spin: the counted loop, LOOP_ITERS x (subs, b.ne) = LOOP_INSNS instructions. Clobbers x1.
spin:
	ldr	x1, =LOOP_ITERS
1:	subs	x1, x1, #1
	b.ne	1b
	ret

// in_range: x0 = 1 when LOOP_INSNS <= x0 < 3 * LOOP_INSNS (one loop counted), else 0.
// Clobbers x1.
in_range:
	ldr	x1, =LOOP_INSNS
	cmp	x0, x1
	b.lo	1f
	ldr	x1, =(LOOP_INSNS * 3)
	cmp	x0, x1
	b.hs	1f
	mov	x0, #1
	ret
1:	mov	x0, #0
	ret

// ccnt_ok: x7 &= (cycle counter allowed (x24) ? x13 counted one loop : x13 == 0).
// Clobbers x0, x1, x6.
ccnt_ok:
	mov	x0, x13
	cbz	x24, 1f
	mov	x6, x30
	bl	in_range
	mov	x30, x6
	cmp	x0, #1
	csel	x7, x7, xzr, eq
	ret
1:	cmp	x0, #0
	csel	x7, x7, xzr, eq
	ret

// chain_run: counter 1 = CHAIN, counter 0 (event already in PMEVTYPER0_EL0) preset
// 0xffff0000, counter 1 preset 0; both enabled over the loop; x11 = counter 0, x12 =
// counter 1. Clobbers x0, x1, x8.
chain_run:
	mov	x8, x30
	mov	x0, #0x1e		// CHAIN
	msr	pmevtyper1_el0, x0
	ldr	x0, =0xffff0000
	msr	pmevcntr0_el0, x0
	msr	pmevcntr1_el0, xzr
	mov	x0, #3
	msr	pmcntenset_el0, x0
	isb
	bl	spin
	mov	x0, #3
	msr	pmcntenclr_el0, x0
	isb
	mrs	x11, pmevcntr0_el0
	mrs	x12, pmevcntr1_el0
	mov	x30, x8
	ret

// reset_run: counters 2, 3 and the cycle counter enabled over the loop; x11 = counter 2,
// x12 = counter 3, x13 = PMCCNTR_EL0. Clobbers x0..x2, x8.
reset_run:
	mov	x8, x30
	ldr	x2, =0x8000000c
	msr	pmcntenset_el0, x2
	isb
	bl	spin
	msr	pmcntenclr_el0, x2
	isb
	mrs	x11, pmevcntr2_el0
	mrs	x12, pmevcntr3_el0
	mrs	x13, pmccntr_el0
	mov	x30, x8
	ret

// ccnt_run: PMCCNTR_EL0 = 0, enabled over the loop, x13 = PMCCNTR_EL0. Clobbers x0, x1, x8.
ccnt_run:
	mov	x8, x30
	msr	pmccntr_el0, xzr
	mov	x0, #0x80000000
	msr	pmcntenset_el0, x0
	isb
	bl	spin
	mov	x0, #0x80000000
	msr	pmcntenclr_el0, x0
	isb
	mrs	x13, pmccntr_el0
	mov	x30, x8
	ret

// el0_run: PMUSERENR_EL0 = x0, then el0_read at EL0 (eret, SPSR_EL1 = EL0t with DAIF
// masked), back here through svc #0 -> lower_sync -> x18. x10..x14 = SENTINEL unless EL0
// read them; x16 = EL0 accesses that trapped, x25 = their el0_read bits, x15 = the last
// one's ESR_EL1, x26 = the PMCR read's; x17 = the svc's ESR_EL1. EL1's view around it:
// [sp] = PMCCNTR_EL0 before, [sp, #8] = after, [sp, #16] = PMCR_EL0. Clobbers x0, x8, x9.
el0_run:
	mov	x8, x30
	msr	pmuserenr_el0, x0
	isb
	ldr	x11, =SENTINEL
	mov	x10, x11
	mov	x12, x11
	mov	x13, x11
	mov	x14, x11
	mov	x15, #0
	mov	x16, #0
	mov	x17, #0
	mov	x25, #0
	mov	x26, #0
	mrs	x0, pmcr_el0
	str	x0, [sp, #16]
	mrs	x0, pmccntr_el0
	str	x0, [sp]
	adr	x18, 1f
	adr	x0, el0_read
	msr	elr_el1, x0
	mov	x0, #0x3c0		// EL0t, D A I F masked
	msr	spsr_el1, x0
	isb
	eret
1:	mrs	x0, pmccntr_el0
	str	x0, [sp, #8]
	mov	x30, x8
	ret

// EL0 code (instruction i = bit i of x25 when it traps).
el0_read:
	mrs	x11, pmcr_el0		// 0
	mrs	x12, pmccntr_el0	// 1
	mrs	x14, pmevcntr0_el0	// 2
	mov	x1, #1000		// 3
1:	subs	x1, x1, #1		// 4
	b.ne	1b			// 5
	mrs	x13, pmccntr_el0	// 6
	mrs	x10, pmevcntr0_el0	// 7
	svc	#0			// 8
	b	.

// Synchronous exception from EL0: svc (EC 0x15) returns to EL1 at x18; a PMU access that
// traps (EC 0x00: KVM's injected UNDEF; EC 0x18: a trapped MRS straight from the
// hardware PMUSERENR_EL0) is recorded (x16, x25, x15, x26: see el0_run) and skipped;
// anything else is unexpected. Clobbers x6, x9.
lower_sync:
	mrs	x17, esr_el1
	lsr	x9, x17, #26
	cmp	x9, #0x15
	b.ne	1f
	br	x18
1:	cmp	x9, #0x00
	b.eq	2f
	cmp	x9, #0x18
	b.ne	unexpected
2:	add	x16, x16, #1
	mov	x15, x17
	mrs	x9, elr_el1
	adr	x6, el0_read
	sub	x6, x9, x6
	lsr	x6, x6, #2
	cbnz	x6, 3f
	mov	x26, x17
3:	mov	x9, #1
	lsl	x6, x9, x6
	orr	x25, x25, x6
	mrs	x9, elr_el1
	add	x9, x9, #4
	msr	elr_el1, x9
	eret

// tap: prints "ok N - " or "not ok N - " (N = ++x23; a failure also counts in x29), the
// string at x1, "\n". x0 = nonzero for ok. tap_todo: the same for a "# TODO" line, whose
// failure does not count. Clobbers x0..x6, x8, x9.
tap_todo:
	mov	x9, #0
	b	1f
tap:
	mov	x9, #1
1:	mov	x8, x30
	add	x23, x23, #1
	mov	x4, x1
	mov	x5, x0
	cbnz	x5, 1f
	add	x29, x29, x9
	adr	x1, s_not
	bl	puts
1:	adr	x1, s_ok
	bl	puts
	mov	x0, #10
	udiv	x6, x23, x0
	msub	x0, x6, x0, x23
	cbz	x6, 2f
	add	w2, w6, #'0'
	bl	putc
2:	add	w2, w0, #'0'
	bl	putc
	adr	x1, s_dash
	bl	puts
	mov	x1, x4
	bl	puts
	mov	w2, #'\n'
	bl	putc
	mov	x30, x8
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
	b	lower_sync		// lower EL (AArch64): synchronous
	.balign	0x80
	.rept	7			// lower EL: the rest
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
s_ok:	.asciz	"ok "
s_not:	.asciz	"not "
s_dash:	.asciz	" - "
	.ltorg
	.text	2			// after the TAP/PUTV strings (subsection 1)
	.balign	8
image_end:
