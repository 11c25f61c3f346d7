//! Enums whose variants are words a user types (`--probe kprobe`, `--stacks all`): one
//! definition gives each its name, `ALL`, `Display` and a `FromStr` whose error lists every
//! name. The library does not depend on clap; the CLI offers these names as possible values.

/// `named_enum! { #[attrs] pub enum Name ("what it is, for errors") { #[attrs] Variant => "name", ... } }`
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident ($what:literal) {
            $($(#[$variant_meta:meta])* $variant:ident => $text:literal),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis enum $name {
            $($(#[$variant_meta])* $variant),+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: [$name; [$($text),+].len()] = [$($name::$variant),+];

            /// The word a user types for it.
            pub fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
                Self::ALL.into_iter().find(|v| v.name() == s).ok_or_else(|| {
                    format!(concat!("unknown ", $what, " {:?}: one of {}"), s, [$($text),+].join(", "))
                })
            }
        }
    };
}

pub(crate) use named_enum;

named_enum! {
    /// A setting that is on or off (`--privsep on`, `--seccomp off`, `--never-run-count off`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Switch ("setting") {
        On => "on",
        Off => "off",
    }
}

#[cfg(test)]
mod tests {
    named_enum! {
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        enum Color ("color") {
            Red => "red",
            DarkBlue => "dark-blue",
        }
    }

    #[test]
    fn names_parse_back_and_errors_list_them() {
        for color in Color::ALL {
            assert_eq!(color.name().parse::<Color>(), Ok(color));
            assert_eq!(color.to_string(), color.name());
        }
        assert_eq!(
            "blue".parse::<Color>(),
            Err("unknown color \"blue\": one of red, dark-blue".to_owned())
        );
    }
}
