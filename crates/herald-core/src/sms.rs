//! An SMS's length as carriers count and bill it: in GSM-7 septets when
//! every character is in the GSM 03.38 alphabet (the extension table's
//! characters take two), otherwise in UCS-2 code units; and in segments: one
//! of up to 160 septets or 70 units, or, concatenated, of 153 or 67 each
//! (the rest is the concatenation header). A split that would cut an
//! escaped character or a surrogate pair in two can cost a vendor one more
//! segment than counted here.

/// What Twilio and Amazon SNS each take at most in one message.
pub const VENDOR_MAX_CHARS: usize = 1600;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Gsm7,
    Ucs2,
}

impl Encoding {
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Gsm7 => "GSM-7",
            Encoding::Ucs2 => "UCS-2",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Length {
    pub encoding: Encoding,
    /// Septets (GSM-7) or UTF-16 code units (UCS-2).
    pub units: usize,
    pub segments: usize,
}

/// Septets a character takes in GSM-7: 1 in the basic alphabet, 2 in the
/// extension table (behind an escape), `None` when it is in neither.
fn septets(c: char) -> Option<usize> {
    match c {
        '\n' | '\r' => Some(1),
        '\u{0c}' | '[' | '\\' | ']' | '^' | '{' | '|' | '}' | '~' | '€' => Some(2),
        '`' => None,
        ' '..='~' => Some(1),
        '£' | '¥' | 'è' | 'é' | 'ù' | 'ì' | 'ò' | 'Ç' | 'Ø' | 'ø' | 'Å' | 'å' | 'Δ' | 'Φ' | 'Γ'
        | 'Λ' | 'Ω' | 'Π' | 'Ψ' | 'Σ' | 'Θ' | 'Ξ' | 'Æ' | 'æ' | 'ß' | 'É' | '¤' | '¡' | 'Ä'
        | 'Ö' | 'Ñ' | 'Ü' | '§' | '¿' | 'ä' | 'ö' | 'ñ' | 'ü' | 'à' => Some(1),
        _ => None,
    }
}

/// `text`'s encoding, units and segments.
pub fn length(text: &str) -> Length {
    let gsm: Option<usize> = text.chars().map(septets).sum();
    let (encoding, units, single, part) = match gsm {
        Some(n) => (Encoding::Gsm7, n, 160, 153),
        None => (Encoding::Ucs2, text.encode_utf16().count(), 70, 67),
    };
    let segments = if units <= single {
        1
    } else {
        units.div_ceil(part)
    };
    Length {
        encoding,
        units,
        segments,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gsm7_counts_septets_and_its_extension_twice() {
        assert_eq!(
            length("Your code is 123456"),
            Length {
                encoding: Encoding::Gsm7,
                units: 19,
                segments: 1
            }
        );
        assert_eq!(length(&"a".repeat(160)).segments, 1);
        assert_eq!(length(&"a".repeat(161)).segments, 2);
        assert_eq!(length(&"a".repeat(306)).segments, 2);
        assert_eq!(length(&"a".repeat(307)).segments, 3);
        // Each of these takes an escape and a septet.
        assert_eq!(length("€[]{}").units, 10);
        assert_eq!(length(&"€".repeat(80)).segments, 1);
        assert_eq!(length(&"€".repeat(81)).segments, 2);
        // Accents in the GSM alphabet keep it GSM-7.
        assert_eq!(length("Grüße, Ærø! ¿Qué tal?").encoding, Encoding::Gsm7);
    }

    #[test]
    fn anything_else_is_ucs2_counted_in_utf16_units() {
        let l = length("Ваш код 123456");
        assert_eq!((l.encoding, l.units, l.segments), (Encoding::Ucs2, 14, 1));
        // One character outside the alphabet makes the whole text UCS-2.
        let mixed = format!("{}â", "a".repeat(69));
        assert_eq!(length(&mixed).segments, 1);
        let mixed = format!("{}â", "a".repeat(70));
        assert_eq!(length(&mixed).segments, 2);
        // An emoji is two UTF-16 units; a backtick is not GSM either.
        assert_eq!(length("🔐").units, 2);
        assert_eq!(length("`").encoding, Encoding::Ucs2);
        assert_eq!(length(&"🔐".repeat(67)).segments, 2, "134 units");
        assert_eq!(length(&"字".repeat(134)).segments, 2);
        assert_eq!(length(&"字".repeat(135)).segments, 3);
        assert_eq!(length("").segments, 1);
    }
}
