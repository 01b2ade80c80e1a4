use std::fmt;

/// Everything that can go wrong is a caller mistake, reported with a message that
/// names the offending value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    Invalid(String),
    /// A training step would have made a weight non-finite (too high a learning
    /// rate or weight decay); the weights were left as they were before the call.
    Diverged(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Invalid(msg) | Error::Diverged(msg) => f.write_str(msg),
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
