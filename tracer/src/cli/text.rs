//! Helpers shared by the text views: aligned, and readable in an 80-column terminal.

/// `s` cut to at most `width` characters.
pub fn clip(s: &str, width: usize) -> String {
    if s.chars().count() <= width { s.to_owned() } else { s.chars().take(width).collect() }
}

/// `s`'s words in lines of at most `width` characters (a longer word gets a line of its own):
/// a last column that wraps instead of losing what does not fit.
pub fn wrap(s: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in s.split_whitespace() {
        match lines.last_mut() {
            Some(line) if line.chars().count() + 1 + word.chars().count() <= width => {
                line.push(' ');
                line.push_str(word);
            }
            _ => lines.push(word.to_owned()),
        }
    }
    if lines.is_empty() {
        lines.push(String::new());
    }
    lines
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
