//! NEO's state enums (node types, node, cluster and cell states) and error codes, with the
//! names neoctl prints and parses.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// An enum with NEO's names: `Display` and `FromStr` use the upper-case name, `ALL` lists
/// the values in wire order.
macro_rules! named_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn name(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(self.name())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }

        impl FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                $name::ALL
                    .iter()
                    .copied()
                    .find(|v| v.name().eq_ignore_ascii_case(s))
                    .ok_or_else(|| {
                        let names: Vec<&str> = $name::ALL.iter().map(|v| v.name()).collect();
                        format!("unknown {} {:?} (one of {})", stringify!($name), s, names.join(", "))
                    })
            }
        }
    };
}

named_enum!(
    /// The role a node plays in the cluster.
    NodeType {
        Master = "MASTER",
        Storage = "STORAGE",
        Client = "CLIENT",
        Admin = "ADMIN",
    }
);

impl NodeType {
    /// The letter of the node id's text form (`S1`, `M1`, ...).
    pub fn letter(self) -> char {
        match self {
            NodeType::Master => 'M',
            NodeType::Storage => 'S',
            NodeType::Client => 'C',
            NodeType::Admin => 'A',
        }
    }
}

named_enum!(
    /// A node's state as the primary master sees it.
    NodeState {
        /// Forgotten (told to a node, it means "you were dropped").
        Unknown = "UNKNOWN",
        /// Known but not connected.
        Down = "DOWN",
        Running = "RUNNING",
        /// A storage that identified but is not serving yet.
        Pending = "PENDING",
    }
);

named_enum!(
    /// The cluster's state, owned by the primary master.
    ClusterState {
        Recovering = "RECOVERING",
        Verifying = "VERIFYING",
        Running = "RUNNING",
        Stopping = "STOPPING",
        StartingBackup = "STARTING_BACKUP",
        Backingup = "BACKINGUP",
        StoppingBackup = "STOPPING_BACKUP",
    }
);

named_enum!(
    /// The state of one cell (partition x storage) of the partition table.
    CellState {
        OutOfDate = "OUT_OF_DATE",
        UpToDate = "UP_TO_DATE",
        Feeding = "FEEDING",
        Corrupted = "CORRUPTED",
        /// Only in change lists: the cell is removed.
        Discarded = "DISCARDED",
    }
);

impl CellState {
    /// Readable cells serve loads: UP_TO_DATE and FEEDING.
    pub fn is_readable(self) -> bool {
        matches!(self, CellState::UpToDate | CellState::Feeding)
    }

    /// The letter `neoctl print pt` uses.
    pub fn letter(self) -> char {
        match self {
            CellState::OutOfDate => 'O',
            CellState::UpToDate => 'U',
            CellState::Feeding => 'F',
            CellState::Corrupted => 'C',
            CellState::Discarded => 'D',
        }
    }
}

named_enum!(
    /// The codes an `Error` answer carries.
    ErrorCode {
        Ack = "ACK",
        Denied = "DENIED",
        NotReady = "NOT_READY",
        OidNotFound = "OID_NOT_FOUND",
        TidNotFound = "TID_NOT_FOUND",
        OidDoesNotExist = "OID_DOES_NOT_EXIST",
        ProtocolError = "PROTOCOL_ERROR",
        ReplicationError = "REPLICATION_ERROR",
        CheckingError = "CHECKING_ERROR",
        BackendNotImplemented = "BACKEND_NOT_IMPLEMENTED",
        NonReadableCell = "NON_READABLE_CELL",
        ReadOnlyAccess = "READ_ONLY_ACCESS",
        IncompleteTransaction = "INCOMPLETE_TRANSACTION",
        UndoPackError = "UNDO_PACK_ERROR",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in ClusterState::ALL {
            assert_eq!(s.name().parse::<ClusterState>().unwrap(), *s);
        }
        for s in CellState::ALL {
            assert_eq!(s.name().to_lowercase().parse::<CellState>().unwrap(), *s);
        }
        assert_eq!(ClusterState::StartingBackup.to_string(), "STARTING_BACKUP");
        assert_eq!(format!("{:<9}|", NodeState::Down), "DOWN     |");
        let err = "RUN".parse::<ClusterState>().unwrap_err();
        assert!(err.contains("RECOVERING"), "{err}");
        assert!(CellState::Feeding.is_readable() && !CellState::OutOfDate.is_readable());
    }
}
