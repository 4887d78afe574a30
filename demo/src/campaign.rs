//! The demo's campaign: made-up patients of a dental practice, fictional +1 555 numbers, and
//! simulator rules that give some numbers a voicemail, a no-answer or a dead line.

use provider_sim::Rule;
use serde_json::{json, Value};

pub const AGENCY: &str = "Sunrise Dental";
pub const TIMEZONE: &str = "America/Chicago";
/// An Ultravox agent id (a UUID) and the number Ultravox dials from through the carrier account.
pub const AGENT_ID: &str = "5b7e2f0a-9c41-4d8e-b2a6-0f3c9d1e7a55";
pub const FROM_NUMBER: &str = "+14155550100";
pub const AGENT_NAME: &str = "Ava";
pub const CAMPAIGN: &str = "Spring check-up reminders";
pub const API_KEY: &str = "sk-demo-7c41d09e55";

const FIRST: &[&str] = &[
    "Olivia", "Liam", "Emma", "Noah", "Ava", "Mateo", "Sophia", "Elijah", "Isabella", "James", "Mia", "Lucas", "Amelia", "Benjamin",
    "Harper", "Santiago", "Evelyn", "Henry", "Camila", "Theodore", "Priya", "Omar", "Yuki", "Chloe", "Daniel", "Aaliyah", "Wei", "Grace",
    "Diego", "Hannah", "Samuel", "Zoe", "Arjun", "Nora", "Gabriel", "Leah", "Malik", "Ruby", "Jonas", "Ines",
];
const LAST: &[&str] = &[
    "Johnson",
    "Garcia",
    "Nguyen",
    "Smith",
    "Patel",
    "Martinez",
    "Brown",
    "Kim",
    "Davis",
    "Lopez",
    "Wilson",
    "Anderson",
    "Thomas",
    "Hernandez",
    "Moore",
    "Okafor",
    "Jackson",
    "Chen",
    "Lee",
    "Walker",
    "Rossi",
    "Haddad",
    "Robinson",
    "Clark",
    "Silva",
    "Lewis",
    "Young",
    "Novak",
    "Allen",
    "Wright",
    "Scott",
    "Torres",
    "Müller",
    "Hill",
    "Flores",
    "Green",
    "Adams",
    "Tanaka",
    "Baker",
    "Rivera",
];
const CLINICS: &[&str] = &["Downtown", "Lakeview", "Riverside"];
const MONTHS: &[&str] =
    &["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];
const SLOTS: &[&str] = &["mornings", "afternoons", "evenings", "any time"];

/// A cheap, fixed mixer: the same contact list every run.
fn mix(i: usize, salt: u64) -> u64 {
    let mut x = (i as u64).wrapping_add(salt).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 29)
}

pub struct Contact {
    pub phone: String,
    pub name: String,
    pub variables: Value,
}

/// `+1 555 xxx xxxx`: area code 555 is unassigned, so none of these rings a real phone.
/// 7919 is prime and coprime with 8·10⁶, so the numbers are distinct for i < 8·10⁶.
pub fn phone(i: usize) -> String {
    format!("+1555{:07}", 2_000_000 + (i as u64 * 7919) % 8_000_000)
}

pub fn contacts(n: usize) -> Vec<Contact> {
    (0..n)
        .map(|i| {
            let first = FIRST[(mix(i, 1) % FIRST.len() as u64) as usize];
            let last = LAST[(mix(i, 2) % LAST.len() as u64) as usize];
            Contact {
                phone: phone(i),
                name: format!("{first} {last}"),
                variables: json!({
                    "first_name": first,
                    "clinic": CLINICS[(mix(i, 3) % CLINICS.len() as u64) as usize],
                    "last_visit": MONTHS[(mix(i, 4) % MONTHS.len() as u64) as usize],
                    "preferred_time": SLOTS[(mix(i, 5) % SLOTS.len() as u64) as usize],
                    "patient_ref": format!("P-{:05}", 10_000 + i),
                }),
            }
        })
        .collect()
}

/// Add-contacts payloads of at most `chunk` elements.
pub fn payloads(list: &[Contact], chunk: usize) -> Vec<Value> {
    list.chunks(chunk)
        .map(|part| Value::Array(part.iter().map(|c| json!({"phone_number": c.phone, "name": c.name, "variables": c.variables})).collect()))
        .collect()
}

/// Outcomes fixed per number (the simulator's random faults do not apply to these numbers):
/// ~8% reach voicemail, ~5% never answer, and about one number in 150 is out of service
/// (400 on every attempt, so it shows retries and then a failed contact).
/// Rules are only written for the first 3000 contacts: the simulator scans them on each call.
pub fn rules(n: usize) -> (Vec<Rule>, usize) {
    let mut rules = Vec::new();
    let mut dead = 0;
    for i in 0..n.min(3000) {
        let to = phone(i);
        if n >= 10 && i % 150 == 37 % n.min(150) {
            rules.push(Rule::new(to).status(400).message("destination number is not in service"));
            dead += 1;
            continue;
        }
        match mix(i, 6) % 100 {
            0..=7 => rules.push(Rule::new(to).end_reason("voicemail").duration_ms(3000 + mix(i, 7) % 2500)),
            8..=12 => rules.push(Rule::new(to).end_reason("unjoined").duration_ms(5000 + mix(i, 8) % 2000)),
            _ => {}
        }
    }
    (rules, dead)
}
