//! The languages the agent can keep a pre-started interpreter for.
//!
//! On the wire they are strings (`ExecStart.warm_language`,
//! `HealthReply.warm_interpreters`) so that an older peer ignores a name it
//! does not know; both ends convert through [`WarmLanguage`] and nowhere
//! else compare names.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A language with a pre-started interpreter in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WarmLanguage {
    /// A fork server: each exec is forked from a warm `python3`.
    Python,
    /// A spare `node` started ahead of each exec.
    Node,
}

impl WarmLanguage {
    pub const ALL: [WarmLanguage; 2] = [WarmLanguage::Python, WarmLanguage::Node];

    /// The name on the wire and in pack definitions.
    pub fn as_str(self) -> &'static str {
        match self {
            WarmLanguage::Python => "python",
            WarmLanguage::Node => "node",
        }
    }

    /// The language a wire name stands for; `None` for an empty or unknown one.
    pub fn from_wire(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.as_str() == name)
    }
}

impl fmt::Display for WarmLanguage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_round_trip_and_unknown_ones_are_none() {
        for language in WarmLanguage::ALL {
            assert_eq!(WarmLanguage::from_wire(language.as_str()), Some(language));
        }
        assert_eq!(WarmLanguage::from_wire(""), None);
        assert_eq!(WarmLanguage::from_wire("ruby"), None);
    }

    #[test]
    fn serde_uses_the_wire_names() {
        #[derive(Deserialize)]
        struct Pack {
            warm_language: WarmLanguage,
        }
        let pack: Pack = serde_json::from_str(r#"{"warm_language":"node"}"#).unwrap();
        assert_eq!(pack.warm_language, WarmLanguage::Node);
        assert!(serde_json::from_str::<Pack>(r#"{"warm_language":"ruby"}"#).is_err());
    }
}
