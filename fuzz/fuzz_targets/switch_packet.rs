//! The switch packet on arbitrary datagrams: a packet the checked view accepts emits back to the
//! same bytes; the agent and a worker's endpoint take any datagram without panicking, count every
//! one they drop, and garbage between the workers' packets does not change their sum.

#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use paramserv_switch::proto::agent::{Agent, AgentConfig, JobParams};
use paramserv_switch::proto::endpoint::{Endpoint, EndpointConfig};
use paramserv_switch::proto::packet::{Packet, PacketRepr};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Packet::new_checked(data) {
        let repr = PacketRepr::parse(&p);
        assert_eq!(repr.buffer_len(), data.len());
        let values: Vec<i32> = p.values().collect();
        let mut again = vec![0u8; data.len()];
        repr.emit_with(&mut again, &values);
        assert_eq!(again, data);
    }

    // Two workers (addresses 0 and 1) with a small pool; the fuzz input arrives from address 2,
    // then from worker 0's address, between the workers' own packets.
    let params = JobParams { workers: 2, slots: 2, values: 4 };
    let config = AgentConfig { max_jobs: 4, max_slots: 8, max_values: 64, max_pool_bytes: 1 << 16, max_pending: 64 };
    let mut agent: Agent<u8> = Agent::new(config);
    let mut workers: Vec<Endpoint> =
        (0..2).map(|w| Endpoint::new(EndpointConfig::new(3, w, params)).unwrap()).collect();
    let inputs = [[1.0f32, -2.0, 3.5, 0.25, 8.0], [0.5f32, 2.0, -1.5, 0.0, -8.0]];
    for (w, input) in workers.iter_mut().zip(&inputs) {
        w.start(input).unwrap();
    }
    let now = Instant::now();
    let mut buf = vec![0u8; 1024];
    for step in 0..64 {
        if step == 1 || step == 5 {
            let before = agent.stats().received;
            let _ = agent.handle_datagram(2, data);
            assert_eq!(agent.stats().received, before + 1);
            workers[1].handle_datagram(now, data);
        }
        for (id, w) in workers.iter_mut().enumerate() {
            while let Some(len) = w.poll_transmit(now, &mut buf) {
                let _ = agent.handle_datagram(id as u8, &buf[..len]);
            }
        }
        while let Some((to, len)) = agent.poll_transmit(&mut buf) {
            if let Some(w) = workers.get_mut(to as usize) {
                w.handle_datagram(now, &buf[..len]);
            }
        }
        if workers.iter().all(|w| w.is_idle()) {
            break;
        }
    }
    // A valid packet may impersonate a worker (there is no authentication, as in SwitchML), so
    // the exact sum is only owed when the datagram was not a packet at all.
    if Packet::new_checked(data).is_err() {
        let exact = [1.5f32, 0.0, 2.0, 0.25, 0.0];
        for w in &mut workers {
            let out = w.finish().expect("finished within the steps").expect("no error");
            assert_eq!(out, exact);
        }
    }
});
