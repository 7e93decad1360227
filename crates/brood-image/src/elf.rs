//! Checks that a binary is a static x86-64 ELF executable.
//!
//! The guest initramfs has no dynamic loader and no libc, so the agent (and
//! busybox) must be static. A binary is static when it has no `PT_INTERP`
//! program header (static-pie binaries are `ET_DYN` without `PT_INTERP`, and
//! are fine). Only the ELF header and program headers are read; everything is
//! bounds-checked because the file comes from the user.

use std::path::Path;

use crate::ImageError;

const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;
const EM_X86_64: u16 = 62;
const PT_INTERP: u32 = 3;
/// Size of an `Elf64_Ehdr`.
const EHDR_LEN: usize = 64;
/// Size of an `Elf64_Phdr`.
const PHDR_LEN: usize = 56;

/// Returns `Ok` when `data` (the contents of `path`) is a static x86-64 ELF
/// executable, and says what is wrong otherwise.
pub(crate) fn check_static_x86_64(path: &Path, data: &[u8]) -> Result<(), ImageError> {
    let not_elf = |reason: &str| ImageError::NotElf {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    if data.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Err(not_elf("no ELF magic"));
    }
    if data.len() < EHDR_LEN {
        return Err(not_elf("truncated ELF header"));
    }
    if data.get(4) != Some(&ELFCLASS64) || data.get(5) != Some(&ELFDATA2LSB) {
        return Err(not_elf("not a 64-bit little-endian ELF"));
    }
    match u16_at(data, 16) {
        Some(ET_EXEC | ET_DYN) => {}
        _ => return Err(not_elf("not an executable")),
    }
    if u16_at(data, 18) != Some(EM_X86_64) {
        return Err(not_elf("not built for x86-64"));
    }
    let phoff = u64_at(data, 0x20).ok_or_else(|| not_elf("truncated ELF header"))?;
    let phentsize = u16_at(data, 0x36).ok_or_else(|| not_elf("truncated ELF header"))?;
    let phnum = u16_at(data, 0x38).ok_or_else(|| not_elf("truncated ELF header"))?;
    if usize::from(phentsize) < PHDR_LEN {
        return Err(not_elf("program header entries too small"));
    }
    let phoff =
        usize::try_from(phoff).map_err(|_| not_elf("program header offset out of range"))?;
    for i in 0..usize::from(phnum) {
        let at = usize::from(phentsize)
            .checked_mul(i)
            .and_then(|off| off.checked_add(phoff))
            .ok_or_else(|| not_elf("program header offset out of range"))?;
        let p_type = u32_at(data, at).ok_or_else(|| not_elf("truncated program headers"))?;
        if p_type == PT_INTERP {
            return Err(ImageError::DynamicallyLinked {
                path: path.to_path_buf(),
                interpreter: interpreter(data, at).unwrap_or_else(|| "?".to_string()),
            });
        }
    }
    Ok(())
}

/// The NUL-terminated path a `PT_INTERP` header at `phdr` points at.
fn interpreter(data: &[u8], phdr: usize) -> Option<String> {
    let offset = usize::try_from(u64_at(data, phdr.checked_add(8)?)?).ok()?;
    let size = usize::try_from(u64_at(data, phdr.checked_add(32)?)?).ok()?;
    let bytes = data.get(offset..offset.checked_add(size)?)?;
    let bytes = bytes.split(|b| *b == 0).next()?;
    Some(String::from_utf8_lossy(bytes).into_owned())
}

fn u16_at(data: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        data.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        data.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u64_at(data: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        data.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 header plus `phdrs` program headers of the given types;
    /// a PT_INTERP header points at "/lib/ld.so\0" placed after the headers.
    fn elf(e_type: u16, machine: u16, phdrs: &[u32]) -> Vec<u8> {
        let mut d = vec![0u8; EHDR_LEN];
        d[..4].copy_from_slice(b"\x7fELF");
        d[4] = ELFCLASS64;
        d[5] = ELFDATA2LSB;
        d[6] = 1;
        d[16..18].copy_from_slice(&e_type.to_le_bytes());
        d[18..20].copy_from_slice(&machine.to_le_bytes());
        d[0x20..0x28].copy_from_slice(&(EHDR_LEN as u64).to_le_bytes());
        d[0x36..0x38].copy_from_slice(&u16::try_from(PHDR_LEN).unwrap().to_le_bytes());
        d[0x38..0x3a].copy_from_slice(&u16::try_from(phdrs.len()).unwrap().to_le_bytes());
        let interp_at = (EHDR_LEN + PHDR_LEN * phdrs.len()) as u64;
        for p_type in phdrs {
            let mut ph = vec![0u8; PHDR_LEN];
            ph[..4].copy_from_slice(&p_type.to_le_bytes());
            ph[8..16].copy_from_slice(&interp_at.to_le_bytes());
            ph[32..40].copy_from_slice(&11u64.to_le_bytes());
            d.extend_from_slice(&ph);
        }
        d.extend_from_slice(b"/lib/ld.so\0");
        d
    }

    fn check(data: &[u8]) -> Result<(), ImageError> {
        check_static_x86_64(Path::new("/x/agent"), data)
    }

    #[test]
    fn static_executable_passes() {
        check(&elf(ET_EXEC, EM_X86_64, &[1, 1, 4])).unwrap();
        // static-pie: ET_DYN without PT_INTERP.
        check(&elf(ET_DYN, EM_X86_64, &[1, 6])).unwrap();
    }

    #[test]
    fn pt_interp_is_refused_with_the_interpreter_and_the_fix() {
        let err = check(&elf(ET_DYN, EM_X86_64, &[6, PT_INTERP, 1])).unwrap_err();
        match &err {
            ImageError::DynamicallyLinked { interpreter, .. } => {
                assert_eq!(interpreter, "/lib/ld.so")
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().contains("+crt-static"), "{err}");
        assert!(err.to_string().contains("/x/agent"), "{err}");
    }

    #[test]
    fn non_elf_and_wrong_machine_are_refused() {
        for data in [
            b"#!/bin/sh\necho hi\n".to_vec(),
            Vec::new(),
            b"\x7fELF".to_vec(),
            elf(ET_EXEC, 183, &[]),
            elf(1, EM_X86_64, &[]),
        ] {
            let err = check(&data).unwrap_err();
            assert!(matches!(err, ImageError::NotElf { .. }), "{err:?}");
        }
    }

    #[test]
    fn hostile_program_headers_do_not_panic() {
        let mut d = elf(ET_EXEC, EM_X86_64, &[1]);
        // phnum = 0xffff, phoff near the end of the address space.
        d[0x38..0x3a].copy_from_slice(&u16::MAX.to_le_bytes());
        assert!(check(&d).is_err());
        d[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(check(&d).is_err());
        // An interpreter header pointing out of the file still reports dynamic.
        let mut d = elf(ET_EXEC, EM_X86_64, &[PT_INTERP]);
        d[EHDR_LEN + 8..EHDR_LEN + 16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            check(&d),
            Err(ImageError::DynamicallyLinked { .. })
        ));
        // Every truncation of a valid file is an error or Ok, never a panic.
        let full = elf(ET_EXEC, EM_X86_64, &[1, PT_INTERP]);
        for len in 0..full.len() {
            let _ = check(&full[..len]);
        }
    }
}
