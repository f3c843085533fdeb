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
    /// The name is one of the fixed entries of the directory the object
    /// would appear in (a device called `bind` next to a driver's `bind`
    /// file).
    #[error("{0:?} is a reserved name")]
    Reserved(&'static str),
}

/// The fixed entries of a driver's directory (`sys/bus/<bus>/drivers/<drv>/`),
/// which also lists its devices by name: no device may be called so.
pub const DRIVER_DIR_ENTRIES: &[&str] = &["bind", "unbind"];

/// The fixed entries of a device's directory (`sys/bus/<bus>/devices/<dev>/`),
/// which also lists its attributes: no attribute may be called so.
pub const DEVICE_DIR_ENTRIES: &[&str] = &["uevent", "driver"];

fn not_reserved(name: &str, reserved: &[&'static str]) -> Result<(), NameError> {
    match reserved.iter().find(|r| **r == name) {
        Some(r) => Err(NameError::Reserved(r)),
        None => Ok(()),
    }
}

/// Checks a device name: a valid component and not a driver directory's
/// own entry (Linux would fail the binding's `sysfs_create_link` with
/// `EEXIST`; refusing the name up front changes nothing instead).
///
/// # Examples
///
/// ```
/// use devlife_core::name::{validate_device, NameError};
/// assert!(validate_device("xyz0").is_ok());
/// assert_eq!(validate_device("bind"), Err(NameError::Reserved("bind")));
/// ```
pub fn validate_device(name: &str) -> Result<(), NameError> {
    validate(name)?;
    not_reserved(name, DRIVER_DIR_ENTRIES)
}

/// Checks an attribute name: a valid component and not a device
/// directory's own entry.
pub fn validate_attr(name: &str) -> Result<(), NameError> {
    validate(name)?;
    not_reserved(name, DEVICE_DIR_ENTRIES)
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

/// Longest accepted control-file write, in bytes (one page, as sysfs).
pub const CONTROL_MAX: usize = 4096;

/// Why a control-file write was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// Longer than [`CONTROL_MAX`].
    #[error("longer than {CONTROL_MAX} bytes")]
    TooLong,
    /// Not UTF-8.
    #[error("not UTF-8")]
    NotUtf8,
    /// Not the expected number of fields.
    #[error("expected {0} space-separated field(s)")]
    Fields(usize),
    /// A field is not a valid name.
    #[error(transparent)]
    Name(#[from] NameError),
}

fn control_text(data: &[u8]) -> Result<&str, ControlError> {
    if data.len() > CONTROL_MAX {
        return Err(ControlError::TooLong);
    }
    let text = std::str::from_utf8(data).map_err(|_| ControlError::NotUtf8)?;
    Ok(text.strip_suffix('\n').unwrap_or(text))
}

/// One name, as `echo name > file` writes it (one trailing newline dropped).
///
/// # Examples
///
/// ```
/// use devlife_core::name::one_name;
/// assert_eq!(one_name(b"xyz0\n"), Ok("xyz0"));
/// assert!(one_name(b"../x").is_err());
/// ```
pub fn one_name(data: &[u8]) -> Result<&str, ControlError> {
    let text = control_text(data)?;
    validate(text)?;
    Ok(text)
}

/// `"<type> <name>"`, as `new_device` takes it.
pub fn type_and_name(data: &[u8]) -> Result<(&str, &str), ControlError> {
    let text = control_text(data)?;
    let mut it = text.split(' ');
    let (Some(ty), Some(name), None) = (it.next(), it.next(), it.next()) else {
        return Err(ControlError::Fields(2));
    };
    validate(ty)?;
    validate_device(name)?;
    Ok((ty, name))
}
