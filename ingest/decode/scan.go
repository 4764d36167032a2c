package decode

import (
	"encoding/binary"
	"math/bits"
	"unicode/utf16"
	"unicode/utf8"
)

// This file is a strict, non-allocating JSON scanner: it accepts exactly the
// texts that are valid UTF-8 and that encoding/json.Valid accepts (RFC 8259,
// nesting at most maxDepth). UTF-8 is checked on the way: outside strings
// only ASCII is valid JSON, and strings check every non-ASCII byte.
// Functions take the input and a position and return the position after what
// they scanned; ok is false for invalid input, with the position at or near
// the fault.

// maxDepth is encoding/json's nesting limit: the top-level value is depth 1.
const maxDepth = 10000

const (
	lo = 0x0101010101010101
	hi = 0x8080808080808080
)

// special marks the bytes that end a fast run inside a string: a quote, a
// backslash, a control character or the start of a non-ASCII sequence.
var special = func() (t [256]bool) {
	for c := range t {
		t[c] = c < 0x20 || c == '"' || c == '\\' || c >= utf8.RuneSelf
	}
	return t
}()

func skipWS(b []byte, i int) int {
	for i < len(b) && b[i] <= ' ' && (b[i] == ' ' || b[i] == '\n' || b[i] == '\t' || b[i] == '\r') {
		i++
	}
	return i
}

// scanString scans the rest of a string whose opening quote is b[i-1]. end
// is the index of the closing quote; esc reports whether the string holds
// escapes.
func scanString(b []byte, i int) (end int, esc, ok bool) {
	for {
		// Skip to the next special byte: a word at a time, then byte by byte.
		hit := false
		for i+8 <= len(b) {
			w := binary.LittleEndian.Uint64(b[i:])
			q := w ^ (lo * '"')
			s := w ^ (lo * '\\')
			// Per byte: < 0x20, == '"', == '\\', >= 0x80. A borrow can only
			// flag bytes above a true hit, so the lowest flagged byte is exact.
			if m := ((w-lo*0x20) & ^w | (q-lo) & ^q | (s-lo) & ^s | w) & hi; m != 0 {
				i += bits.TrailingZeros64(m) >> 3
				hit = true
				break
			}
			i += 8
		}
		if !hit {
			for i < len(b) && !special[b[i]] {
				i++
			}
			if i >= len(b) {
				return i, esc, false
			}
		}
		switch b[i] {
		case '"':
			return i, esc, true
		case '\\':
			esc = true
			if i+1 >= len(b) {
				return i, esc, false
			}
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(b) || !isHex(b[i+2]) || !isHex(b[i+3]) || !isHex(b[i+4]) || !isHex(b[i+5]) {
					return i, esc, false
				}
				i += 6
			default:
				return i, esc, false
			}
		default:
			if b[i] < utf8.RuneSelf { // a control character
				return i, esc, false
			}
			r, size := utf8.DecodeRune(b[i:])
			if r == utf8.RuneError && size == 1 {
				return i, esc, false
			}
			i += size
		}
	}
}

func isHex(c byte) bool {
	return c-'0' < 10 || (c|0x20)-'a' < 6
}

func isDigit(c byte) bool { return c-'0' < 10 }

// scanNumber scans a number starting at b[i]. isInt reports that it has no
// fraction and no exponent.
func scanNumber(b []byte, i int) (end int, isInt, ok bool) {
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i >= len(b):
		return i, false, false
	case b[i] == '0':
		i++
	case isDigit(b[i]):
		for i++; i < len(b) && isDigit(b[i]); i++ {
		}
	default:
		return i, false, false
	}
	isInt = true
	if i < len(b) && b[i] == '.' {
		isInt = false
		i++
		if i >= len(b) || !isDigit(b[i]) {
			return i, false, false
		}
		for i++; i < len(b) && isDigit(b[i]); i++ {
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		isInt = false
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i >= len(b) || !isDigit(b[i]) {
			return i, false, false
		}
		for i++; i < len(b) && isDigit(b[i]); i++ {
		}
	}
	return i, isInt, true
}

// scanLiteral scans true, false or null starting at b[i].
func scanLiteral(b []byte, i int) (int, bool) {
	var lit string
	switch b[i] {
	case 't':
		lit = "true"
	case 'f':
		lit = "false"
	default:
		lit = "null"
	}
	if len(b)-i < len(lit) || string(b[i:i+len(lit)]) != lit {
		return i, false
	}
	return i + len(lit), true
}

// skipValue scans one JSON value of any type starting at b[i] (after
// whitespace), at nesting depth depth+1. stack is scratch space for the
// container nesting (true: object); the grown stack is returned for reuse.
func skipValue(b []byte, i, depth int, stack []bool) (end int, ok bool, _ []bool) {
	stack = stack[:0]
	for {
		// A value is expected at i.
		i = skipWS(b, i)
		if i >= len(b) {
			return i, false, stack
		}
		switch c := b[i]; c {
		case '{', '[':
			if depth+len(stack)+1 > maxDepth {
				return i, false, stack
			}
			i = skipWS(b, i+1)
			if i < len(b) && b[i] == c+2 { // '}' or ']'
				i++
				break
			}
			stack = append(stack, c == '{')
			if c == '{' {
				if i, ok = scanKey(b, i); !ok {
					return i, false, stack
				}
			}
			continue
		case '"':
			if i, _, ok = scanString(b, i+1); !ok {
				return i, false, stack
			}
			i++
		case 't', 'f', 'n':
			if i, ok = scanLiteral(b, i); !ok {
				return i, false, stack
			}
		default:
			if i, _, ok = scanNumber(b, i); !ok {
				return i, false, stack
			}
		}
		// A value ended at i: close containers until one continues.
		for {
			if len(stack) == 0 {
				return i, true, stack
			}
			i = skipWS(b, i)
			if i >= len(b) {
				return i, false, stack
			}
			obj := stack[len(stack)-1]
			if b[i] == ',' {
				i++
				if obj {
					if i, ok = scanKey(b, skipWS(b, i)); !ok {
						return i, false, stack
					}
				}
				break
			}
			if (obj && b[i] != '}') || (!obj && b[i] != ']') {
				return i, false, stack
			}
			i++
			stack = stack[:len(stack)-1]
		}
	}
}

// scanKey scans `"key" :` starting at b[i] and returns the position after
// the colon.
func scanKey(b []byte, i int) (int, bool) {
	if i >= len(b) || b[i] != '"' {
		return i, false
	}
	i, _, ok := scanString(b, i+1)
	if !ok {
		return i, false
	}
	i = skipWS(b, i+1)
	if i >= len(b) || b[i] != ':' {
		return i, false
	}
	return i + 1, true
}

// appendUnescaped appends the decoded content of a string that scanString
// accepted. Like encoding/json, an escaped UTF-16 surrogate that is not half
// of a valid pair becomes U+FFFD.
func appendUnescaped(dst, s []byte) []byte {
	for {
		n := 0
		for n < len(s) && s[n] != '\\' {
			n++
		}
		dst = append(dst, s[:n]...)
		if n == len(s) {
			return dst
		}
		s = s[n:]
		switch e := s[1]; e {
		case 'u':
			r := hex4(s[2:6])
			s = s[6:]
			if utf16.IsSurrogate(r) {
				r2 := utf8.RuneError
				if len(s) >= 6 && s[0] == '\\' && s[1] == 'u' {
					r2 = utf16.DecodeRune(r, hex4(s[2:6]))
				}
				if r2 != utf8.RuneError {
					s = s[6:]
				}
				r = r2
			}
			dst = utf8.AppendRune(dst, r)
			continue
		case 'b':
			dst = append(dst, '\b')
		case 'f':
			dst = append(dst, '\f')
		case 'n':
			dst = append(dst, '\n')
		case 'r':
			dst = append(dst, '\r')
		case 't':
			dst = append(dst, '\t')
		default: // '"', '\\', '/'
			dst = append(dst, e)
		}
		s = s[2:]
	}
}

func hex4(b []byte) rune {
	var x rune
	for _, c := range b[:4] {
		switch {
		case c <= '9':
			c -= '0'
		case c >= 'a':
			c -= 'a' - 10
		default:
			c -= 'A' - 10
		}
		x = x<<4 | rune(c)
	}
	return x
}
