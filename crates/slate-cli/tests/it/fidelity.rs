//! Bit-for-bit round trips: the nasty generated tree and the Debian corpus.
