//! Stand-in for wdk 0.5.0: procguard uses nothing from it.
#![no_std]
