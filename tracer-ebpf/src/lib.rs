//! Empty on the host: the kernel programs are the `tracer` bin of this crate, built for the BPF
//! target. This lib only lets `tracer` name the crate as a build-dependency.
#![no_std]
