//! The protocol: identifiers, states, the packet catalogue and the framing of the byte
//! stream. Pure data and pure functions; both the simulator and the production runtime use
//! it unchanged.

pub mod frame;
pub mod ids;
pub mod packet;
pub mod states;

pub use ids::{Address, Nid, Oid, Ptid, Tid, WallTime};
pub use packet::{
    Data, IdentificationExtra, Kind, Message, NodeInfo, Packet, Relocked, UndoSerial,
};
pub use states::{CellState, ClusterState, ErrorCode, NodeState, NodeType};
