use object::{Object, ObjectSection, ObjectSymbol};

use super::*;

const SP: u64 = 0x7ffd_0000_1000;
const IP: u64 = 0x7f00_0000_0100;
const CALLER: u64 = 0x5555_0000_0200;
const GRANDCALLER: u64 = 0x5555_0000_0300;

/// A wrapper without a frame pointer that entered the kernel with its return address at sp.
fn leaf(pc: u64, _: AddressRole) -> FrameRule {
    if pc == IP {
        FrameRule::StackPointer { cfa_offset: 8, ra_offset: -8, bp_offset: None }
    } else {
        FrameRule::FramePointer
    }
}

#[test]
fn the_caller_of_a_frameless_wrapper_is_inserted_after_the_first_frame() {
    let window = [CALLER, 0, 0];
    let got = recover(IP, SP, 0, &window, &[IP, GRANDCALLER], leaf).expect("recovered");
    assert_eq!(got, vec![IP, CALLER, GRANDCALLER]);
}

#[test]
fn an_address_the_frame_pointer_walk_already_has_is_not_repeated() {
    let window = [CALLER];
    assert_eq!(recover(IP, SP, 0, &window, &[IP, CALLER, GRANDCALLER], leaf), None);
}

#[test]
fn nothing_is_recovered_from_a_frame_pointer_function_or_a_short_window_or_other_registers() {
    let fp = |_: u64, _: AddressRole| FrameRule::FramePointer;
    assert_eq!(recover(IP, SP, 0, &[CALLER], &[IP, GRANDCALLER], fp), None);
    // The return address lies past the window.
    let deep = |pc: u64, _: AddressRole| {
        if pc == IP {
            FrameRule::StackPointer { cfa_offset: 40, ra_offset: -8, bp_offset: None }
        } else {
            FrameRule::FramePointer
        }
    };
    assert_eq!(recover(IP, SP, 0, &[0, 0, 0], &[IP, GRANDCALLER], deep), None);
    // Registers of another moment than the stack's (ip differs from its first frame).
    assert_eq!(recover(IP + 4, SP, 0, &[CALLER], &[IP, GRANDCALLER], leaf), None);
}

#[test]
fn several_frameless_frames_are_unwound_until_a_frame_pointer_function() {
    const INNER: u64 = 0x7f00_0000_0500;
    // IP's function keeps 0x18 bytes and returns into INNER's caller chain: IP -> INNER
    // (frameless too, saved rbp at cfa-16) -> CALLER (frame pointer).
    let rules = |pc: u64, _: AddressRole| match pc {
        IP => FrameRule::StackPointer { cfa_offset: 0x20, ra_offset: -8, bp_offset: None },
        INNER => FrameRule::StackPointer { cfa_offset: 0x10, ra_offset: -8, bp_offset: Some(-16) },
        _ => FrameRule::FramePointer,
    };
    let mut window = [0u64; 8];
    window[3] = INNER; // sp + 0x18 = cfa - 8
    window[5] = CALLER; // new sp = sp + 0x20; its cfa = sp + 0x30; ra at sp + 0x28
    window[4] = 0x1234; // INNER's saved rbp, the bp the thread entered with
    let got = recover(IP, SP, 0x1234, &window, &[IP, GRANDCALLER], rules).expect("recovered");
    assert_eq!(got, vec![IP, INNER, CALLER, GRANDCALLER]);
    // Had INNER's function changed rbp, the kernel's walk did not start from a frame pointer.
    let got = recover(IP, SP, 0x9999, &window, &[IP, GRANDCALLER], rules).expect("recovered");
    assert_eq!(got, vec![IP, INNER, CALLER]);
}

/// This process's C library, as mapped.
fn libc_path() -> String {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.rsplit('/').next().is_some_and(|f| f.starts_with("libc.so")))
        .expect("a dynamically linked test binary maps libc")
        .to_string()
}

#[test]
fn the_c_library_wrappers_keep_no_frame_pointer_and_their_return_address_is_found() {
    let bytes = std::fs::read(libc_path()).expect("read libc");
    let cfi = ModuleCfi::from_elf(&*bytes).expect("libc has .eh_frame");
    let elf = object::File::parse(&*bytes).expect("ELF");
    for name in ["connect", "accept", "accept4"] {
        let symbol = elf
            .dynamic_symbols()
            .find(|s| s.name() == Ok(name))
            .unwrap_or_else(|| panic!("libc exports {name}"));
        let (start, size) = (symbol.address(), symbol.size());
        assert!(size > 0, "{name}");
        // At entry the return address is at sp, whatever the compiler did: the ABI's rule.
        assert_eq!(
            cfi.rule_at(start, AddressRole::Current),
            FrameRule::StackPointer { cfa_offset: 8, ra_offset: -8, bp_offset: None },
            "{name} at entry"
        );
        // Everywhere inside, the CFA comes from rsp: the function has no frame pointer, which
        // is what makes the kernel's walk skip its caller.
        for vaddr in start..start + size {
            match cfi.rule_at(vaddr, AddressRole::Current) {
                FrameRule::StackPointer { cfa_offset, ra_offset: -8, .. } => {
                    assert!(cfa_offset >= 8, "{name}+{:#x}", vaddr - start)
                }
                other => panic!("{name}+{:#x}: {other:?}", vaddr - start),
            }
        }
        // Unwinding from its entry with a synthetic stack returns the word at sp.
        let got = recover(start, SP, 0, &[CALLER], &[start, GRANDCALLER], |pc, role| {
            cfi.rule_at(pc, role)
        });
        assert_eq!(got, Some(vec![start, CALLER, GRANDCALLER]), "{name}");
    }
    // File offsets of the text map back to the same virtual addresses the symbols use.
    let text = elf.section_by_name(".text").expect(".text");
    let (offset, _) = text.file_range().expect("in the file");
    assert_eq!(cfi.vaddr_of_offset(offset), Some(text.address()));
}

#[test]
fn a_file_without_call_frame_information_says_so() {
    let err = ModuleCfi::from_elf(&b"not an ELF file"[..]).err().expect("error");
    assert!(err.to_string().contains("not an ELF file"), "{err}");
}
