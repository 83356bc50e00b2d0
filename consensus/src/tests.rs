//! Table-driven tests of each rule (filled below).
