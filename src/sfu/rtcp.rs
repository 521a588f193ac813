//! An interceptor that hands the viewer's keyframe requests (PLI, FIR), and
//! for a session that answers them itself its NACKs, to the application
//! (`TrackLocalEvent::OnRtcpPacket`) and counts the NACKs; all other inbound
//! RTCP stays with the interceptors that act on it (NACK responder, reports).

use std::collections::VecDeque;
use std::time::Instant;

use rtc::interceptor::{Attribute, Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::sansio::Protocol;
use rtc::shared::error::Error;

/// Forwards PLI/FIR to the application. Register it last (application-most).
pub struct KeyframeRequestForwarder {
    read_queue: VecDeque<TaggedPacket>,
    write_queue: VecDeque<TaggedPacket>,
    nacks: prometheus::IntCounter,
    deliver_nacks: bool,
}

impl KeyframeRequestForwarder {
    /// Counts the viewer's RTCP NACK packets in `nacks`.
    pub fn new(nacks: prometheus::IntCounter) -> Self {
        KeyframeRequestForwarder {
            read_queue: VecDeque::new(),
            write_queue: VecDeque::new(),
            nacks,
            deliver_nacks: false,
        }
    }

    /// Hands the NACKs to the application too (a session with no NACK
    /// responder interceptor, which resends from its own history).
    pub fn delivering_nacks(nacks: prometheus::IntCounter) -> Self {
        KeyframeRequestForwarder { deliver_nacks: true, ..Self::new(nacks) }
    }
}

/// True when an RTCP packet asks for a keyframe.
pub fn is_keyframe_request(packet: &dyn rtc::rtcp::Packet) -> bool {
    let any = packet.as_any();
    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeRequestForwarder {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            let nacks = packets.iter().filter(|p| p.as_any().is::<TransportLayerNack>()).count();
            self.nacks.inc_by(nacks as u64);
            let requests: Vec<Box<dyn rtc::rtcp::Packet>> = packets
                .iter()
                .filter(|p| {
                    is_keyframe_request(p.as_ref()) || (self.deliver_nacks && p.as_any().is::<TransportLayerNack>())
                })
                .cloned()
                .collect();
            if requests.is_empty() {
                return Ok(());
            }
            msg.message.packet = Packet::Rtcp(requests);
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.read_queue.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read_queue.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write_queue.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write_queue.pop_front()
    }
}

impl Interceptor for KeyframeRequestForwarder {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}
