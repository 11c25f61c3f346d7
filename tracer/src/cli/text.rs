//! Helpers shared by the text views: aligned, and readable in an 80-column terminal.

/// `s` cut to at most `width` characters.
pub fn clip(s: &str, width: usize) -> String {
    if s.chars().count() <= width { s.to_owned() } else { s.chars().take(width).collect() }
}

/// An age for people: seconds, then minutes, hours, days.
pub fn age(seconds: u64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}
