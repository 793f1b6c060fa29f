//! Bad input, crashes and concurrency: repositories stay valid and every
//! failure is one clear error.
