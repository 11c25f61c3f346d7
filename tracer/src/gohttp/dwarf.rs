//! The offsets of [`FIELDS`] from a Go binary's DWARF (`.debug_info`, which Go compresses:
//! `.zdebug_*` sections up to Go 1.19, `SHF_COMPRESSED` sections since).

use std::borrow::Cow;
use std::collections::HashMap;

use object::{Object, ObjectSection};

use super::layout::{ConnOffsets, FIELDS, GoField};

/// Largest decompressed debug section accepted (a hostile header could claim any size).
const MAX_SECTION: u64 = 1 << 30;

/// Why the DWARF gave no offsets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DwarfError {
    #[error("unreadable DWARF section {section}: {reason}")]
    Section { section: &'static str, reason: String },
    #[error("malformed DWARF: {0}")]
    Malformed(String),
    #[error("the DWARF describes no member {member} of {type_name}")]
    MissingField { type_name: &'static str, member: &'static str },
}

/// The offsets from the DWARF of `file`; `Ok(None)` when it has no `.debug_info` (built with
/// `-w` or stripped).
pub fn offsets(file: &object::File<'_>) -> Result<Option<ConnOffsets>, DwarfError> {
    if section(file, ".debug_info")?.is_empty() {
        return Ok(None);
    }
    let endian = if file.is_little_endian() {
        gimli::RunTimeEndian::Little
    } else {
        gimli::RunTimeEndian::Big
    };
    let sections = gimli::DwarfSections::load(|id| section(file, id.name()))?;
    let dwarf = sections.borrow(|s| gimli::EndianSlice::new(s, endian));
    let found = members(&dwarf).map_err(|e| DwarfError::Malformed(e.to_string()))?;
    let mut out = [0u64; FIELDS.len()];
    for (slot, f) in out.iter_mut().zip(FIELDS) {
        *slot = *found
            .get(&f)
            .ok_or(DwarfError::MissingField { type_name: f.type_name, member: f.member })?;
    }
    Ok(Some(ConnOffsets::from_array(out)))
}

/// The offsets of the wanted members, from the first definition of each struct.
fn members<R: gimli::Reader>(dwarf: &gimli::Dwarf<R>) -> gimli::Result<HashMap<GoField, u64>> {
    let mut found = HashMap::new();
    let mut units = dwarf.units();
    while let Some(header) = units.next()? {
        let unit = dwarf.unit(header)?;
        let mut entries = unit.entries();
        // The wanted struct being read, and its depth.
        let mut current: Option<(&'static str, isize)> = None;
        while let Some(entry) = entries.next_dfs()? {
            let depth = entry.depth();
            if current.is_some_and(|(_, d)| depth <= d) {
                current = None;
            }
            let tag = entry.tag();
            if tag != gimli::DW_TAG_structure_type && tag != gimli::DW_TAG_member {
                continue;
            }
            let Some(name) = entry.attr_value(gimli::DW_AT_name) else { continue };
            let name = dwarf.attr_string(&unit, name)?;
            let name = name.to_string_lossy()?;
            if tag == gimli::DW_TAG_structure_type {
                current = FIELDS
                    .iter()
                    .find(|f| f.type_name == name)
                    .filter(|f| !found.keys().any(|k: &GoField| k.type_name == f.type_name))
                    .map(|f| (f.type_name, depth));
                continue;
            }
            let Some((type_name, struct_depth)) = current else { continue };
            if depth != struct_depth + 1 {
                continue;
            }
            let Some(f) = FIELDS.iter().find(|f| f.type_name == type_name && f.member == name)
            else {
                continue;
            };
            if let Some(offset) =
                entry.attr_value(gimli::DW_AT_data_member_location).and_then(|v| v.udata_value())
            {
                found.insert(*f, offset);
            }
        }
        if found.len() == FIELDS.len() {
            break;
        }
    }
    Ok(found)
}

/// A debug section's bytes, decompressed; empty when the file has none. Finds `.zdebug_*`
/// names for `.debug_*` ones.
fn section<'a>(file: &object::File<'a>, name: &'static str) -> Result<Cow<'a, [u8]>, DwarfError> {
    let zname = name.strip_prefix(".debug_").map(|rest| format!(".zdebug_{rest}"));
    let found = file
        .section_by_name(name)
        .or_else(|| zname.as_deref().and_then(|z| file.section_by_name(z)));
    let Some(sec) = found else { return Ok(Cow::Borrowed(&[])) };
    let err = |reason: String| DwarfError::Section { section: name, reason };
    let compressed = sec.compressed_data().map_err(|e| err(e.to_string()))?;
    match compressed.format {
        object::CompressionFormat::None => Ok(Cow::Borrowed(compressed.data)),
        object::CompressionFormat::Zlib => {
            if compressed.uncompressed_size > MAX_SECTION {
                return Err(err(format!(
                    "claims {} bytes decompressed (more than 1 GiB)",
                    compressed.uncompressed_size
                )));
            }
            let mut out = Vec::with_capacity(compressed.uncompressed_size as usize);
            let mut decoder = flate2::Decompress::new(true);
            decoder
                .decompress_vec(compressed.data, &mut out, flate2::FlushDecompress::Finish)
                .map_err(|e| err(format!("zlib: {e}")))?;
            if out.len() as u64 != compressed.uncompressed_size {
                return Err(err(format!(
                    "decompressed to {} bytes, the header says {}",
                    out.len(),
                    compressed.uncompressed_size
                )));
            }
            Ok(Cow::Owned(out))
        }
        other => Err(err(format!("unsupported compression {other:?}"))),
    }
}
