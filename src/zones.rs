//! A contact's time zone from its phone number, where the number's country has a single zone
//! (the IANA zone.tab lists one zone for it). Pure: no pgrx.

/// ISO 3166 country → its only IANA zone. Countries with several zones (US, CA, MX, BR, RU, AU,
/// ES, PT, DE with Busingen, CN with Urumqi, ...) are absent on purpose: their contacts need an
/// explicit zone or fall back to the agency's.
const SINGLE_ZONE: &[(&str, &str)] = &[
    ("AE", "Asia/Dubai"),
    ("AT", "Europe/Vienna"),
    ("BB", "America/Barbados"),
    ("BD", "Asia/Dhaka"),
    ("BE", "Europe/Brussels"),
    ("BG", "Europe/Sofia"),
    ("BH", "Asia/Bahrain"),
    ("BO", "America/La_Paz"),
    ("BS", "America/Nassau"),
    ("CH", "Europe/Zurich"),
    ("CO", "America/Bogota"),
    ("CR", "America/Costa_Rica"),
    ("CU", "America/Havana"),
    ("CZ", "Europe/Prague"),
    ("DK", "Europe/Copenhagen"),
    ("DO", "America/Santo_Domingo"),
    ("EE", "Europe/Tallinn"),
    ("EG", "Africa/Cairo"),
    ("FI", "Europe/Helsinki"),
    ("FR", "Europe/Paris"),
    ("GB", "Europe/London"),
    ("GH", "Africa/Accra"),
    ("GR", "Europe/Athens"),
    ("GT", "America/Guatemala"),
    ("HK", "Asia/Hong_Kong"),
    ("HN", "America/Tegucigalpa"),
    ("HR", "Europe/Zagreb"),
    ("HU", "Europe/Budapest"),
    ("IE", "Europe/Dublin"),
    ("IL", "Asia/Jerusalem"),
    ("IN", "Asia/Kolkata"),
    ("IS", "Atlantic/Reykjavik"),
    ("IT", "Europe/Rome"),
    ("JM", "America/Jamaica"),
    ("JO", "Asia/Amman"),
    ("JP", "Asia/Tokyo"),
    ("KE", "Africa/Nairobi"),
    ("KR", "Asia/Seoul"),
    ("KW", "Asia/Kuwait"),
    ("LB", "Asia/Beirut"),
    ("LK", "Asia/Colombo"),
    ("LT", "Europe/Vilnius"),
    ("LV", "Europe/Riga"),
    ("MA", "Africa/Casablanca"),
    ("NG", "Africa/Lagos"),
    ("NI", "America/Managua"),
    ("NL", "Europe/Amsterdam"),
    ("NO", "Europe/Oslo"),
    ("NP", "Asia/Kathmandu"),
    ("OM", "Asia/Muscat"),
    ("PA", "America/Panama"),
    ("PE", "America/Lima"),
    ("PH", "Asia/Manila"),
    ("PK", "Asia/Karachi"),
    ("PL", "Europe/Warsaw"),
    ("PR", "America/Puerto_Rico"),
    ("PY", "America/Asuncion"),
    ("QA", "Asia/Qatar"),
    ("RO", "Europe/Bucharest"),
    ("RS", "Europe/Belgrade"),
    ("SA", "Asia/Riyadh"),
    ("SE", "Europe/Stockholm"),
    ("SG", "Asia/Singapore"),
    ("SI", "Europe/Ljubljana"),
    ("SK", "Europe/Bratislava"),
    ("SV", "America/El_Salvador"),
    ("TH", "Asia/Bangkok"),
    ("TR", "Europe/Istanbul"),
    ("TT", "America/Port_of_Spain"),
    ("TW", "Asia/Taipei"),
    ("UY", "America/Montevideo"),
    ("VE", "America/Caracas"),
    ("VN", "Asia/Ho_Chi_Minh"),
    ("ZA", "Africa/Johannesburg"),
];

/// Parses the phone-number metadata now. Called in the postmaster when the library is preloaded,
/// so every backend inherits it instead of paying ~0.1-0.5 s on its first number.
pub fn warm_up() {
    let _ = zone_for_number("+442079460000");
}

/// The zone of an E.164 number's country when that country has one; None otherwise.
pub fn zone_for_number(e164: &str) -> Option<&'static str> {
    if e164.len() > 20 {
        return None;
    }
    let number = phonenumber::parse(None, e164).ok()?;
    let country = format!("{:?}", number.country().id()?);
    SINGLE_ZONE.iter().find(|(c, _)| *c == country).map(|(_, z)| *z)
}

/// Where a number rings, for choosing a local caller ID: `"<country calling code>:<area>"`, the
/// area being the first three digits of the national number (the NANP area code exactly; an
/// approximation of the region prefix elsewhere). None for what does not parse.
pub fn locality(e164: &str) -> Option<String> {
    if e164.len() > 20 {
        return None;
    }
    let number = phonenumber::parse(None, e164).ok()?;
    let national = number.national().value().to_string();
    let area: String = national.chars().take(3).collect();
    Some(format!("{}:{area}", number.code().value()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locality_is_calling_code_and_area() {
        assert_eq!(locality("+14155550123").as_deref(), Some("1:415"));
        assert_eq!(locality("+12125550123").as_deref(), Some("1:212"));
        assert_eq!(locality("+442079460000").as_deref(), Some("44:207"));
        assert_eq!(locality("+919876543210").as_deref(), Some("91:987"));
        assert_eq!(locality("junk"), None);
        assert_eq!(locality(&"9".repeat(500)), None);
    }

    #[test]
    fn single_zone_countries_and_the_rest() {
        assert_eq!(zone_for_number("+442079460000"), Some("Europe/London"));
        assert_eq!(zone_for_number("+919876543210"), Some("Asia/Kolkata"));
        assert_eq!(zone_for_number("+18765551234"), Some("America/Jamaica"), "NANP numbers resolve to their country");
        assert_eq!(zone_for_number("+14155550123"), None, "the US has many zones");
        assert_eq!(zone_for_number("+5511987654321"), None, "so has Brazil");
        assert_eq!(zone_for_number("not a number"), None);
        assert_eq!(zone_for_number(&"9".repeat(500)), None);
    }

    #[test]
    fn every_zone_is_a_real_iana_zone() {
        for (_, z) in SINGLE_ZONE {
            assert!(z.parse::<chrono_tz::Tz>().is_ok(), "{z}");
        }
    }
}
