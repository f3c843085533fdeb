//! Validation of device, driver, node and file names.
//!
//! Names become path components of the served tree, so a name that could
//! escape it (`/`, `..`) or confuse it is refused before anything changes.

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("empty name")]
    Empty,
    /// The name is longer than [`NAME_MAX`] bytes.
    #[error("name longer than {NAME_MAX} bytes")]
    TooLong,
    /// The name is `.` or `..`.
    #[error("name is a dot entry")]
    Dot,
    /// The name contains a `/`, a NUL, or a control character.
    #[error("name contains {0:?}")]
    BadChar(char),
}

/// The longest name accepted, in bytes (Linux `NAME_MAX`).
pub const NAME_MAX: usize = 255;

/// Checks that `name` can be one path component.
///
/// # Examples
///
/// ```
/// use devlife_core::name::{validate, NameError};
/// assert!(validate("xyz0").is_ok());
/// assert_eq!(validate("../etc"), Err(NameError::BadChar('/')));
/// assert_eq!(validate(".."), Err(NameError::Dot));
/// ```
pub fn validate(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > NAME_MAX {
        return Err(NameError::TooLong);
    }
    if name == "." || name == ".." {
        return Err(NameError::Dot);
    }
    if let Some(c) = name.chars().find(|&c| c == '/' || c.is_control()) {
        return Err(NameError::BadChar(c));
    }
    Ok(())
}
