//! The flattened device tree an arm64 Linux guest boots with (written with rust-vmm's
//! `vm-fdt`), and a small reader of such blobs for checks.
//!
//! Nodes (root `#address-cells = #size-cells = 2`, so every `reg` is u64 pairs):
//! `cpus/cpu@N` (`enable-method = "psci"`, `reg` = MPIDR affinity), `memory@…`, `psci`
//! (0.2, `hvc`), `intc@…` (GICv3: distributor + redistributor regions), `timer`
//! (arch timer PPIs 13, 14, 11, 10), `uart@…` (ns16550a, SPI, `clock-frequency`),
//! `virtio_mmio@…` (one per device), `chosen` (`bootargs`, `stdout-path`,
//! `linux,initrd-start/end`).

use std::collections::BTreeMap;

use vm_fdt::FdtWriter;

use super::layout;

/// phandle of the interrupt controller.
pub const GIC_PHANDLE: u32 = 1;
/// Interrupt specifier type: SPI.
pub const IRQ_TYPE_SPI: u32 = 0;
/// Interrupt specifier type: PPI.
pub const IRQ_TYPE_PPI: u32 = 1;
/// Trigger: edge rising (irqfd-driven device interrupts).
pub const IRQ_EDGE_RISING: u32 = 1;
/// Trigger: level high.
pub const IRQ_LEVEL_HIGH: u32 = 4;
/// Arch timer PPIs: secure physical, non-secure physical, virtual, hypervisor.
pub const TIMER_PPIS: [u32; 4] = [13, 14, 11, 10];
/// PMU overflow interrupt: PPI 7 = INTID 23 (what KVM_ARM_VCPU_PMU_V3_IRQ takes, see
/// [`PMU_INTID`]; Cloud Hypervisor's `AARCH64_PMU_IRQ`).
pub const PMU_PPI: u32 = 7;
/// The PMU overflow interrupt's INTID (PPIs are INTIDs 16..31).
pub const PMU_INTID: u32 = PMU_PPI + 16;
/// GIC maintenance interrupt PPI.
pub const GIC_MAINT_PPI: u32 = 9;
/// Clock the UART reports (vm-superio ignores baud rates; any sane value will do).
pub const UART_CLOCK_HZ: u32 = 1_843_200;

/// What the device tree describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdtConfig {
    /// MPIDR_EL1 of each vCPU, in vCPU order.
    pub mpidrs: Vec<u64>,
    /// Guest RAM (start, size).
    pub memory: (u64, u64),
    /// Kernel command line.
    pub cmdline: String,
    /// Initrd (start, size).
    pub initrd: Option<(u64, u64)>,
    /// The 16550 (base, SPI).
    pub serial: (u64, u32),
    /// virtio-mmio devices (base, SPI).
    pub virtio: Vec<(u64, u32)>,
    /// A `pmu` node (`arm,armv8-pmuv3`, PPI [`PMU_PPI`]): the guest has KVM's PMUv3.
    pub pmu: bool,
}

/// Why a device tree could not be written.
#[derive(Debug, thiserror::Error)]
pub enum FdtError {
    /// vm-fdt refused something.
    #[error("device tree: {0}")]
    Writer(#[from] vm_fdt::Error),
    /// The blob is larger than booting.rst allows.
    #[error("device tree of {0} bytes exceeds 2 MiB")]
    TooBig(usize),
    /// More CPUs than a 32-bit count describes.
    #[error("{0} CPUs do not fit the GIC redistributor layout")]
    TooManyCpus(usize),
}

fn irq(kind: u32, n: u32, trigger: u32) -> [u32; 3] {
    [kind, n, trigger]
}

/// Writes the device tree for `cfg`.
pub fn create_fdt(cfg: &FdtConfig) -> Result<Vec<u8>, FdtError> {
    let mut f = FdtWriter::new()?;
    let root = f.begin_node("")?;
    f.property_string("compatible", "linux,dummy-virt")?;
    f.property_u32("#address-cells", 2)?;
    f.property_u32("#size-cells", 2)?;
    f.property_u32("interrupt-parent", GIC_PHANDLE)?;

    let cpus = f.begin_node("cpus")?;
    f.property_u32("#address-cells", 2)?;
    f.property_u32("#size-cells", 0)?;
    for mpidr in &cfg.mpidrs {
        let reg = super::regs::mpidr_to_fdt_reg(*mpidr);
        let cpu = f.begin_node(&format!("cpu@{reg:x}"))?;
        f.property_string("device_type", "cpu")?;
        f.property_string("compatible", "arm,arm-v8")?;
        f.property_string("enable-method", "psci")?;
        f.property_u64("reg", reg)?;
        f.end_node(cpu)?;
    }
    f.end_node(cpus)?;

    let (mem_start, mem_size) = cfg.memory;
    let mem = f.begin_node(&format!("memory@{mem_start:x}"))?;
    f.property_string("device_type", "memory")?;
    f.property_array_u64("reg", &[mem_start, mem_size])?;
    f.end_node(mem)?;

    let (uart_base, uart_spi) = cfg.serial;
    let uart_name = format!("uart@{uart_base:x}");
    let chosen = f.begin_node("chosen")?;
    f.property_string("bootargs", &cfg.cmdline)?;
    f.property_string("stdout-path", &format!("/{uart_name}"))?;
    if let Some((start, size)) = cfg.initrd {
        f.property_u64("linux,initrd-start", start)?;
        f.property_u64("linux,initrd-end", start + size)?;
    }
    f.end_node(chosen)?;

    let psci = f.begin_node("psci")?;
    f.property_string_list(
        "compatible",
        vec!["arm,psci-0.2".to_string(), "arm,psci".to_string()],
    )?;
    f.property_string("method", "hvc")?;
    f.end_node(psci)?;

    let ncpus =
        u32::try_from(cfg.mpidrs.len()).map_err(|_| FdtError::TooManyCpus(cfg.mpidrs.len()))?;
    let intc = f.begin_node(&format!("intc@{:x}", layout::GIC_DIST_BASE))?;
    f.property_string("compatible", "arm,gic-v3")?;
    f.property_null("interrupt-controller")?;
    f.property_u32("#interrupt-cells", 3)?;
    f.property_array_u64(
        "reg",
        &[
            layout::GIC_DIST_BASE,
            layout::GIC_DIST_SIZE,
            layout::gic_redist_base(ncpus),
            layout::gic_redist_size(ncpus),
        ],
    )?;
    f.property_phandle(GIC_PHANDLE)?;
    f.property_u32("#address-cells", 2)?;
    f.property_u32("#size-cells", 2)?;
    f.property_null("ranges")?;
    f.property_array_u32(
        "interrupts",
        &irq(IRQ_TYPE_PPI, GIC_MAINT_PPI, IRQ_LEVEL_HIGH),
    )?;
    f.end_node(intc)?;

    let timer = f.begin_node("timer")?;
    f.property_string("compatible", "arm,armv8-timer")?;
    f.property_null("always-on")?;
    let cells: Vec<u32> = TIMER_PPIS
        .iter()
        .flat_map(|&p| irq(IRQ_TYPE_PPI, p, IRQ_LEVEL_HIGH))
        .collect();
    f.property_array_u32("interrupts", &cells)?;
    f.end_node(timer)?;

    if cfg.pmu {
        // Documentation/devicetree/bindings/arm/pmu.yaml: one per-CPU PPI, level high.
        let pmu = f.begin_node("pmu")?;
        f.property_string("compatible", "arm,armv8-pmuv3")?;
        f.property_array_u32("interrupts", &irq(IRQ_TYPE_PPI, PMU_PPI, IRQ_LEVEL_HIGH))?;
        f.end_node(pmu)?;
    }

    let uart = f.begin_node(&uart_name)?;
    f.property_string("compatible", "ns16550a")?;
    f.property_array_u64("reg", &[uart_base, layout::MMIO_LEN])?;
    f.property_u32("clock-frequency", UART_CLOCK_HZ)?;
    f.property_array_u32("interrupts", &irq(IRQ_TYPE_SPI, uart_spi, IRQ_EDGE_RISING))?;
    f.end_node(uart)?;

    for &(base, spi) in &cfg.virtio {
        let v = f.begin_node(&format!("virtio_mmio@{base:x}"))?;
        f.property_string("compatible", "virtio,mmio")?;
        f.property_array_u64("reg", &[base, layout::MMIO_LEN])?;
        f.property_array_u32("interrupts", &irq(IRQ_TYPE_SPI, spi, IRQ_EDGE_RISING))?;
        f.property_u32("interrupt-parent", GIC_PHANDLE)?;
        f.property_null("dma-coherent")?;
        f.end_node(v)?;
    }

    f.end_node(root)?;
    let blob = f.finish()?;
    if blob.len() as u64 > layout::FDT_MAX_SIZE {
        return Err(FdtError::TooBig(blob.len()));
    }
    Ok(blob)
}

/// Nodes of a decoded device tree: full path ("/", "/cpus/cpu@0", ...) to its properties.
pub type DecodedFdt = BTreeMap<String, BTreeMap<String, Vec<u8>>>;

/// Reads a flattened device tree back (header, structure and strings blocks), for checks.
pub fn decode(blob: &[u8]) -> Result<DecodedFdt, String> {
    let be32 = |off: usize| -> Result<u32, String> {
        blob.get(off..off + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| format!("read past the end at {off:#x}"))
    };
    if be32(0)? != 0xd00d_feed {
        return Err("bad magic".into());
    }
    if be32(4)? as usize != blob.len() {
        return Err("totalsize is not the blob's length".into());
    }
    let structs = be32(8)? as usize;
    let strings = be32(12)? as usize;
    let mut out = DecodedFdt::new();
    let mut path: Vec<String> = Vec::new();
    let mut off = structs;
    let full = |p: &[String]| {
        if p.len() <= 1 {
            "/".to_string()
        } else {
            p[1..].iter().fold(String::new(), |s, n| s + "/" + n)
        }
    };
    loop {
        let token = be32(off)?;
        off += 4;
        match token {
            1 => {
                let end = blob[off..]
                    .iter()
                    .position(|&b| b == 0)
                    .ok_or("unterminated node name")?;
                let name = String::from_utf8_lossy(&blob[off..off + end]).into_owned();
                off = (off + end + 1 + 3) & !3;
                path.push(name);
                out.entry(full(&path)).or_default();
            }
            2 => {
                path.pop().ok_or("END_NODE without BEGIN_NODE")?;
            }
            3 => {
                let len = be32(off)? as usize;
                let nameoff = be32(off + 4)? as usize;
                let val = blob
                    .get(off + 8..off + 8 + len)
                    .ok_or("property past the end")?
                    .to_vec();
                off = (off + 8 + len + 3) & !3;
                let s = strings + nameoff;
                let end = blob
                    .get(s..)
                    .and_then(|t| t.iter().position(|&b| b == 0))
                    .ok_or("bad property name")?;
                let name = String::from_utf8_lossy(&blob[s..s + end]).into_owned();
                out.entry(full(&path)).or_default().insert(name, val);
            }
            4 => {}
            9 => break,
            t => return Err(format!("bad token {t:#x} at {:#x}", off - 4)),
        }
    }
    if !path.is_empty() {
        return Err("unclosed nodes".into());
    }
    Ok(out)
}

/// Big-endian u32 cells of a property value.
pub fn cells(v: &[u8]) -> Vec<u32> {
    v.chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Big-endian u64 values of a property value.
pub fn cells64(v: &[u8]) -> Vec<u64> {
    v.chunks_exact(8)
        .map(|c| u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(cpus: u64, disks: usize) -> FdtConfig {
        FdtConfig {
            mpidrs: (0..cpus).map(|i| 0x8000_0000 | i).collect(),
            memory: (layout::DRAM_START, 512 << 20),
            cmdline: "console=ttyS0 quiet".into(),
            initrd: Some((0x9000_0000, 0x10_0000)),
            serial: (layout::SERIAL_BASE, layout::SERIAL_SPI),
            virtio: (0..disks).filter_map(layout::virtio_mmio).collect(),
            pmu: false,
        }
    }

    fn s(v: &[u8]) -> &str {
        std::str::from_utf8(v).unwrap().trim_end_matches('\0')
    }

    #[test]
    fn pmu_node_only_with_the_pmu() {
        let t = decode(&create_fdt(&config(1, 0)).unwrap()).unwrap();
        assert!(!t.contains_key("/pmu"));
        let mut c = config(2, 0);
        c.pmu = true;
        let t = decode(&create_fdt(&c).unwrap()).unwrap();
        let pmu = &t["/pmu"];
        assert_eq!(s(&pmu["compatible"]), "arm,armv8-pmuv3");
        assert_eq!(cells(&pmu["interrupts"]), [IRQ_TYPE_PPI, 7, IRQ_LEVEL_HIGH]);
        assert_eq!(PMU_INTID, 23);
    }

    #[test]
    fn nodes_read_back() {
        let blob = create_fdt(&config(2, 2)).unwrap();
        let t = decode(&blob).unwrap();
        let root = &t["/"];
        assert_eq!(s(&root["compatible"]), "linux,dummy-virt");
        assert_eq!(cells(&root["#address-cells"]), [2]);
        assert_eq!(cells(&root["interrupt-parent"]), [GIC_PHANDLE]);

        for i in 0..2u64 {
            let cpu = &t[&format!("/cpus/cpu@{i:x}")];
            assert_eq!(s(&cpu["enable-method"]), "psci");
            assert_eq!(s(&cpu["device_type"]), "cpu");
            assert_eq!(cells64(&cpu["reg"]), [i]);
        }
        assert!(!t.contains_key("/cpus/cpu@2"));

        let mem = &t["/memory@80000000"];
        assert_eq!(cells64(&mem["reg"]), [0x8000_0000, 512 << 20]);

        let chosen = &t["/chosen"];
        assert_eq!(s(&chosen["bootargs"]), "console=ttyS0 quiet");
        assert_eq!(s(&chosen["stdout-path"]), "/uart@40002000");
        assert_eq!(cells64(&chosen["linux,initrd-start"]), [0x9000_0000]);
        assert_eq!(cells64(&chosen["linux,initrd-end"]), [0x9010_0000]);

        let psci = &t["/psci"];
        assert!(psci["compatible"].starts_with(b"arm,psci-0.2\0"));
        assert_eq!(s(&psci["method"]), "hvc");

        let gic = &t["/intc@3fff0000"];
        assert_eq!(s(&gic["compatible"]), "arm,gic-v3");
        assert!(gic.contains_key("interrupt-controller"));
        assert_eq!(cells(&gic["phandle"]), [GIC_PHANDLE]);
        assert_eq!(cells(&gic["#interrupt-cells"]), [3]);
        assert_eq!(
            cells64(&gic["reg"]),
            [0x3FFF_0000, 0x1_0000, 0x3FFF_0000 - 0x4_0000, 0x4_0000]
        );

        let timer = &t["/timer"];
        assert_eq!(s(&timer["compatible"]), "arm,armv8-timer");
        assert_eq!(
            cells(&timer["interrupts"]),
            [1, 13, 4, 1, 14, 4, 1, 11, 4, 1, 10, 4]
        );

        let uart = &t["/uart@40002000"];
        assert_eq!(s(&uart["compatible"]), "ns16550a");
        assert_eq!(cells64(&uart["reg"]), [0x4000_2000, 0x1000]);
        assert_eq!(cells(&uart["interrupts"]), [0, 0, 1]);

        for (i, base) in (0u32..).zip([0x4000_3000u64, 0x4000_4000]) {
            let v = &t[&format!("/virtio_mmio@{base:x}")];
            assert_eq!(s(&v["compatible"]), "virtio,mmio");
            assert_eq!(cells64(&v["reg"]), [base, 0x1000]);
            assert_eq!(cells(&v["interrupts"]), [0, 1 + i, 1]);
        }
    }

    #[test]
    fn no_initrd_no_disks_one_cpu() {
        let mut c = config(1, 0);
        c.initrd = None;
        let t = decode(&create_fdt(&c).unwrap()).unwrap();
        assert!(!t["/chosen"].contains_key("linux,initrd-start"));
        assert!(!t.keys().any(|k| k.contains("virtio")));
        assert_eq!(
            cells64(&t["/intc@3fff0000"]["reg"])[2],
            layout::gic_redist_base(1)
        );
    }

    #[test]
    fn decode_rejects_garbage() {
        assert!(decode(&[0u8; 64]).is_err());
        let mut blob = create_fdt(&config(1, 0)).unwrap();
        blob.truncate(blob.len() - 8);
        assert!(decode(&blob).is_err());
    }
}
