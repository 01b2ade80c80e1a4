use std::fmt;

/// Everything that can go wrong is a caller mistake, reported with a message that
/// names the offending value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Invalid(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for Error {}

/// Shorthand for an `Err(Error::Invalid(..))` with a formatted message.
macro_rules! invalid {
    ($($arg:tt)*) => {
        Err($crate::error::Error::Invalid(format!($($arg)*)))
    };
}
pub(crate) use invalid;
