//! `depotfs serve` (placeholder).
