//! The supervisor: the root-owned job engine (spawning jobs into namespaces and
//! cgroups, capturing their output, recording their status) and the Unix-socket
//! service around it. Built in the engine and service issues.
