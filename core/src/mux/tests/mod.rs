//! Tests of the mux session.

mod fuzz;
