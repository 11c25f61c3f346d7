//! The `growth` rule: the floor (minimum) of the open count in each sub-window must rise
//! strictly from one sub-window to the next, by at least G over the window.
//!
//! Minimums, not means: a pool that churns around a level has a flat floor; a leak under churn
//! lifts the floor however much the count oscillates above it. Strictly rising in every
//! sub-window: a pool that warms up and then plateaus stops rising and never fires.
use std::collections::VecDeque;

use super::DetectorConfig;

/// The floor of each complete sub-window, oldest first. With fewer samples than a window,
/// only the complete sub-windows so far (aligned to the newest sample).
pub fn sub_window_floors(open: &VecDeque<u32>, config: &DetectorConfig) -> Vec<u32> {
    let per = config.window_samples / config.sub_windows.max(1);
    if per == 0 {
        return Vec::new();
    }
    let complete = open.len() / per;
    let skip = open.len() - complete * per;
    let samples: Vec<u32> = open.iter().skip(skip).copied().collect();
    samples.chunks(per).map(|chunk| chunk.iter().copied().min().unwrap_or(0)).collect()
}

/// The rise of the floor shown to users (`top`'s `growth`), and whether it is partial. Over a
/// full window: the last complete sub-window's floor less the first's. While the first window
/// is still filling: the floor of the newest samples less that of the oldest, each as many as a
/// sub-window holds or half the samples so far, whichever is fewer; a process leaking 5
/// connections a second shows its rise from the start, not 0 for the length of a window.
pub fn so_far(open: &VecDeque<u32>, config: &DetectorConfig) -> (i64, bool) {
    let floor_rise = |floors: &[u32]| match (floors.first(), floors.last()) {
        (Some(first), Some(last)) if floors.len() >= 2 => i64::from(*last) - i64::from(*first),
        _ => 0,
    };
    if open.len() >= config.window_samples {
        return (floor_rise(&sub_window_floors(open, config)), false);
    }
    let per = (config.window_samples / config.sub_windows.max(1)).max(1);
    let half = per.min(open.len() / 2);
    if half == 0 {
        return (0, true);
    }
    let floor = |samples: &mut dyn Iterator<Item = &u32>| samples.min().copied().unwrap_or(0);
    let oldest = floor(&mut open.iter().take(half));
    let newest = floor(&mut open.iter().skip(open.len() - half));
    (i64::from(newest) - i64::from(oldest), true)
}

/// True when a full window shows a strictly rising floor with a total rise of at least G.
pub fn holds(open: &VecDeque<u32>, config: &DetectorConfig) -> bool {
    if open.len() < config.window_samples {
        return false;
    }
    let floors = sub_window_floors(open, config);
    let rising = floors.windows(2).all(|pair| pair[1] > pair[0]);
    let rise = match (floors.first(), floors.last()) {
        (Some(first), Some(last)) => last.saturating_sub(*first),
        _ => 0,
    };
    floors.len() == config.sub_windows && rising && rise >= config.growth_min
}

/// A *suspect* for the opener-stacks policy: the floor rose in each of the last two
/// sub-window steps (three complete sub-windows, strictly rising). It marks a process before
/// `growth` can raise (which needs a whole window), so that its connections' stacks are
/// captured by the time the alert raises. A pool warming up is briefly a suspect too: that
/// costs only stack captures, never an alert.
pub fn suspect(open: &VecDeque<u32>, config: &DetectorConfig) -> bool {
    let floors = sub_window_floors(open, config);
    match floors.as_slice() {
        [.., a, b, c] => a < b && b < c,
        _ => false,
    }
}
