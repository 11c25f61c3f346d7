#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tracer::fuzzing::elf_layout(data));
