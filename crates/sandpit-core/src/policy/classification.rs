//! UK Government Security Classifications (2023), in order of sensitivity.
//! OFFICIAL-SENSITIVE is the OFFICIAL tier with the SENSITIVE handling caveat;
//! it sits between OFFICIAL and SECRET for every decision Sandpit makes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Classification {
    Official,
    OfficialSensitive,
    Secret,
    TopSecret,
}

impl Classification {
    pub const ALL: [Classification; 4] = [
        Classification::Official,
        Classification::OfficialSensitive,
        Classification::Secret,
        Classification::TopSecret,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Classification::Official => "OFFICIAL",
            Classification::OfficialSensitive => "OFFICIAL-SENSITIVE",
            Classification::Secret => "SECRET",
            Classification::TopSecret => "TOP-SECRET",
        }
    }
}

impl fmt::Display for Classification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Classification {
    type Err = String;

    /// Accepts the canonical names in any case, with `-`, `_` or a space between words.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm: String =
            s.trim().chars().map(|c| if c == '_' || c == ' ' { '-' } else { c.to_ascii_uppercase() }).collect();
        Classification::ALL.into_iter().find(|c| c.as_str() == norm).ok_or_else(|| {
            format!(
                "{} is not a classification (OFFICIAL, OFFICIAL-SENSITIVE, SECRET, TOP-SECRET)",
                crate::error::quoted(s)
            )
        })
    }
}

impl TryFrom<String> for Classification {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Classification> for String {
    fn from(c: Classification) -> String {
        c.as_str().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordered_by_sensitivity() {
        use Classification::*;
        assert!(Official < OfficialSensitive && OfficialSensitive < Secret && Secret < TopSecret);
    }

    #[test]
    fn parses_spellings_and_round_trips() {
        for c in Classification::ALL {
            assert_eq!(c.as_str().parse::<Classification>().unwrap(), c);
            assert_eq!(c.as_str().to_lowercase().parse::<Classification>().unwrap(), c);
        }
        assert_eq!("official_sensitive".parse::<Classification>().unwrap(), Classification::OfficialSensitive);
        assert_eq!("Top Secret".parse::<Classification>().unwrap(), Classification::TopSecret);
        assert!("RESTRICTED".parse::<Classification>().is_err());
        assert!("".parse::<Classification>().is_err());
    }
}
