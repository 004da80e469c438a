//! The arm64 Linux `Image` header (Documentation/arm64/booting.rst), checked before the
//! image is copied into guest memory so that a garbage, truncated or oversized file gets one
//! clear error instead of a guest that never starts.
//!
//! ```text
//! u32 code0; u32 code1; u64 text_offset; u64 image_size; u64 flags;
//! u64 res2; u64 res3; u64 res4; u32 magic = 0x644d5241 ("ARM\x64"); u32 res5 (PE offset)
//! ```
//! An EFI-stub kernel (`code0` starts with "MZ") is also a PE/COFF file whose section table
//! says how long the file must be; a shorter file was truncated.

/// Header length.
pub const HEADER_LEN: usize = 64;
/// `magic` at offset 56: "ARM\x64".
pub const IMAGE_MAGIC: u32 = 0x644d_5241;
/// `text_offset` to assume when `image_size` is 0 (kernels before 3.17).
pub const LEGACY_TEXT_OFFSET: u64 = 0x8_0000;

/// What the header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageHeader {
    /// Offset of the image from a 2 MiB aligned base.
    pub text_offset: u64,
    /// Bytes the kernel occupies from its start, BSS included (never less than the file).
    pub image_size: u64,
    /// Header flags (bit 0: big endian; bits 1-2: page size; bit 3: placement).
    pub flags: u64,
}

impl ImageHeader {
    /// Guest-physical end (exclusive) of the kernel loaded at 2 MiB aligned `base`.
    pub fn end(&self, base: u64) -> Option<u64> {
        base.checked_add(self.text_offset)?
            .checked_add(self.image_size)
    }
}

/// Why a file is not a bootable arm64 Image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// Shorter than the header.
    #[error("{0} bytes: too short for an arm64 Image header ({HEADER_LEN} bytes)")]
    TooShort(usize),
    /// No "ARM\x64" magic.
    #[error("not an arm64 Image (no \"ARM\\x64\" magic at offset 56: {0:#010x})")]
    BadMagic(u32),
    /// A big-endian kernel (flags bit 0).
    #[error("a big-endian arm64 Image (flags {0:#x}): only little-endian kernels can boot")]
    BigEndian(u64),
    /// The PE/COFF section table reaches past the end of the file.
    #[error("truncated: its sections need {need} bytes, the file has {have}")]
    Truncated {
        /// Bytes the section table covers.
        need: u64,
        /// File length.
        have: u64,
    },
    /// text_offset/image_size make no sense.
    #[error("implausible header: text_offset {text_offset:#x}, image_size {image_size:#x}, file {file:#x} bytes")]
    Implausible {
        /// text_offset.
        text_offset: u64,
        /// image_size.
        image_size: u64,
        /// File length.
        file: u64,
    },
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}
fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}
fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// Bytes a PE/COFF file's section table covers (max PointerToRawData + SizeOfRawData), if
/// `image` is one (starts with "MZ" and has a "PE\0\0" signature where offset 60 says).
fn pe_raw_end(image: &[u8]) -> Option<u64> {
    if image.get(0..2)? != b"MZ" {
        return None;
    }
    let pe = u32_at(image, 60)? as usize;
    if image.get(pe..pe.checked_add(4)?)? != b"PE\0\0" {
        return None;
    }
    let nsec = u16_at(image, pe + 6)? as usize;
    let opt = u16_at(image, pe + 20)? as usize;
    let table = pe + 24 + opt;
    let mut end = 0u64;
    for i in 0..nsec {
        let s = table + 40 * i;
        // A section table cut off by the end of the file: the file is truncated there.
        let (Some(size), Some(ptr)) = (u32_at(image, s + 16), u32_at(image, s + 20)) else {
            return Some(s as u64 + 40);
        };
        end = end.max(u64::from(ptr) + u64::from(size));
    }
    Some(end)
}

/// Parses and checks the header of `image` (the whole file).
pub fn parse(image: &[u8]) -> Result<ImageHeader, ImageError> {
    if image.len() < HEADER_LEN {
        return Err(ImageError::TooShort(image.len()));
    }
    let short = || ImageError::TooShort(image.len());
    let magic = u32_at(image, 56).ok_or_else(short)?;
    if magic != IMAGE_MAGIC {
        return Err(ImageError::BadMagic(magic));
    }
    let mut text_offset = u64_at(image, 8).ok_or_else(short)?;
    let mut image_size = u64_at(image, 16).ok_or_else(short)?;
    let flags = u64_at(image, 24).ok_or_else(short)?;
    if flags & 1 != 0 {
        return Err(ImageError::BigEndian(flags));
    }
    let file = image.len() as u64;
    if image_size == 0 {
        text_offset = LEGACY_TEXT_OFFSET;
        image_size = file;
    }
    if text_offset >= 0x20_0000 || text_offset % 4096 != 0 || image_size < file {
        return Err(ImageError::Implausible {
            text_offset,
            image_size,
            file,
        });
    }
    if let Some(need) = pe_raw_end(image) {
        if need > file {
            return Err(ImageError::Truncated { need, have: file });
        }
    }
    Ok(ImageHeader {
        text_offset,
        image_size,
        flags,
    })
}

/// A minimal header for an Image of `len` file bytes whose kernel takes `image_size` bytes
/// (tests, and the freestanding guests' format).
pub fn header(image_size: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[16..24].copy_from_slice(&image_size.to_le_bytes());
    h[24..32].copy_from_slice(&0xau64.to_le_bytes()); // 4K pages, anywhere in RAM
    h[56..60].copy_from_slice(&IMAGE_MAGIC.to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(len: usize, image_size: u64) -> Vec<u8> {
        let mut v = vec![0u8; len];
        v[..HEADER_LEN].copy_from_slice(&header(image_size));
        v
    }

    #[test]
    fn good_and_bad() {
        let h = parse(&image(4096, 0x10000)).unwrap();
        assert_eq!(h.text_offset, 0);
        assert_eq!(h.image_size, 0x10000);
        assert_eq!(h.end(0x8000_0000), Some(0x8001_0000));
        assert_eq!(parse(&[0u8; 10]), Err(ImageError::TooShort(10)));
        assert_eq!(parse(&[0u8; 100]), Err(ImageError::BadMagic(0)));
        let mut be = image(4096, 0x10000);
        be[24] = 1;
        assert!(matches!(parse(&be), Err(ImageError::BigEndian(1))));
        // image_size below the file size
        assert!(matches!(
            parse(&image(8192, 4096)),
            Err(ImageError::Implausible { .. })
        ));
        // legacy header: text_offset 0x80000, size = file
        let h = parse(&image(4096, 0)).unwrap();
        assert_eq!((h.text_offset, h.image_size), (LEGACY_TEXT_OFFSET, 4096));
        let mut odd = image(4096, 0x10000);
        odd[8] = 0x10;
        assert!(matches!(parse(&odd), Err(ImageError::Implausible { .. })));
    }

    /// A PE/COFF-flavoured Image with one section of raw data up to `raw_end`.
    fn pe_image(len: usize, raw_end: u32) -> Vec<u8> {
        let mut v = image(len, 0x100000);
        v[0..2].copy_from_slice(b"MZ");
        v[60..64].copy_from_slice(&64u32.to_le_bytes());
        v[64..68].copy_from_slice(b"PE\0\0");
        v[64 + 6..64 + 8].copy_from_slice(&1u16.to_le_bytes()); // one section
        v[64 + 20..64 + 22].copy_from_slice(&0u16.to_le_bytes()); // no optional header
        let s = 64 + 24;
        v[s + 16..s + 20].copy_from_slice(&(raw_end - 0x1000).to_le_bytes());
        v[s + 20..s + 24].copy_from_slice(&0x1000u32.to_le_bytes());
        v
    }

    #[test]
    fn truncated_pe() {
        assert!(parse(&pe_image(0x4000, 0x4000)).is_ok());
        assert_eq!(
            parse(&pe_image(0x3000, 0x4000)),
            Err(ImageError::Truncated {
                need: 0x4000,
                have: 0x3000
            })
        );
        // The section table itself cut off.
        let v = pe_image(0x4000, 0x4000);
        assert!(matches!(
            pe_raw_end(&v[..100]),
            Some(n) if n > 100
        ));
    }
}
