package decode

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

// refScanString is scanString written byte by byte.
func refScanString(b []byte, i int) (end int, esc, ok bool) {
	for ; i < len(b); i++ {
		switch c := b[i]; {
		case c == '"':
			return i, esc, true
		case c == '\\':
			esc = true
			if i+1 >= len(b) {
				return i, esc, false
			}
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i++
			case 'u':
				if i+6 > len(b) || !isHex(b[i+2]) || !isHex(b[i+3]) || !isHex(b[i+4]) || !isHex(b[i+5]) {
					return i, esc, false
				}
				i += 5
			default:
				return i, esc, false
			}
		case c < 0x20:
			return i, esc, false
		case c >= utf8.RuneSelf:
			r, size := utf8.DecodeRune(b[i:])
			if r == utf8.RuneError && size == 1 {
				return i, esc, false
			}
			i += size - 1
		}
	}
	return i, esc, false
}

func TestScanString(t *testing.T) {
	// Every byte value at every position of a word and a half, after runs
	// of ordinary and non-ASCII bytes, alone or followed by a second special
	// byte, with and without a closing quote.
	f := func(b []byte) {
		t.Helper()
		end, esc, ok := scanString(b, 0)
		wantEnd, wantEsc, wantOK := refScanString(b, 0)
		if end != wantEnd || esc != wantEsc || ok != wantOK {
			t.Fatalf("scanString(%q) = %d, %v, %v; want %d, %v, %v", b, end, esc, ok, wantEnd, wantEsc, wantOK)
		}
	}
	for _, fill := range []byte{'a', 0x7f, 0x80, 0xbf, 0xc3, 0xe2, 0xf0, 0xff, ' ', '!', '#', '[', ']'} {
		for c := range 256 {
			for pos := range 13 {
				for _, second := range []int{-1, pos + 1, pos + 3} {
					for _, next := range []byte{0, '"', '\\', 'u'} {
						b := bytes.Repeat([]byte{fill}, 13)
						b[pos] = byte(c)
						if second >= 0 && second < len(b) {
							b[second] = next
						}
						f(b)
						f(append(b, '"'))
					}
				}
			}
		}
	}
	for _, s := range []string{`"`, `\"`, `\\"`, `\u0041"`, `\u004"`, `\u00G1"`, `\x"`, `\`, `abc\`, `\u`, `\u00`,
		`0123456\"x"`, `01234567\\"`, `\/\b\f\n\r\t"`, `\ud83d\ude00"`,
		"é\"", "😀\"", "aaaaaaa😀\"", "aaaaaaaé\"", "\xc3\"", "\xc3", "aaaaaaa\xf0\x9f\x98", "\xed\xa0\x80\"", "\xc0\xaf\"",
		"\xf4\x90\x80\x80\"", "\xef\xbf\xbd\"", "\u2028\"", "\u00a0\u3000\"", "\x7f\x80\""} {
		f([]byte(s))
	}
}

func TestScanMatchesJSONValid(t *testing.T) {
	d := New(Config{})
	f := func(s string) {
		t.Helper()
		rej := d.scan([]byte(s))
		valid := utf8.ValidString(s) && json.Valid([]byte(s)) && strings.HasPrefix(strings.TrimLeft(s, " \t\r\n"), "{")
		if (rej == nil) != valid {
			t.Fatalf("scan(%.80q) = %v, json.Valid object: %v", s, rej, valid)
		}
	}
	nest := func(n int, open, close string) string { return strings.Repeat(open, n) + strings.Repeat(close, n) }
	for _, s := range []string{
		`{}`, ` { } `, `{"a":1}`, `{"a":[]}`, `{"a":{}}`, `{"a":[{}]}`, `{"":""}`, `{"a":"\u0000\"\\\/\b\f\n\r\t"}`,
		`{"a":-0}`, `{"a":-0.0e-0}`, `{"a":1E+2}`, `{"a":0.5}`, `{"a":[1 , 2 ]}`, `{"a":{"b":{"c":null}}}`,
		`{"a":-01}`, `{"a":00}`, `{"a":1.e2}`, `{"a":1e+}`, `{"a":--1}`, `{"a":[,]}`, `{"a":[1 2]}`, `{"a":{"b"}}`,
		`{"a":{"b":}}`, `{"a":{,}}`, `{"a":{"b":1,}}`, `{"a":[1,]}`, `{"a":"\u"}`, `{"a":"\uDEAD"}`, `{"a":"\U0041"}`,
		`{"a":truefalse}`, `{"a":true false}`, `{"a" : null }`, "{\"a\":\"\x7f\"}", "{\"a\":\"\x1f\"}", `{"a":"\'"}`,
		`{"a\"b":1}`, `{"a\u0022":1}`, `{"\":1}`, `{"a":1}}`, `{"a":1}]`, `{"a":[}`, `{"a":]}`, "{\"a\":1}\v",
		"{\"a\":1}\u00a0", "\u00a0{}", `{"a":nulll}`, `{"a":"x"y}`,
		"{\"a\":" + nest(9999, "[", "]") + "}", "{\"a\":" + nest(10000, "[", "]") + "}",
		"{\"a\":" + nest(9998, "[", "]")[:9998] + "{}" + nest(9998, "[", "]")[9998:] + "}",
		"{\"a\":" + nest(9999, "[", "]")[:9999] + "{}" + nest(9999, "[", "]")[9999:] + "}",
		"{\"a\":" + strings.Repeat(`{"b":`, 9999) + "1" + strings.Repeat("}", 9999) + "}",
		"{\"a\":" + strings.Repeat(`{"b":`, 10000) + "1" + strings.Repeat("}", 10000) + "}",
		"{\"a\":\"\xff\"}", "{\"\xff\":1}", "{\"a\":1}\xff", "\xff{}", "{\"a\":[\"\xc3\"]}", "{\"a\":[\"\xc3\xa9\"]}",
		"{\"a\":\xc3\xa9}", "{\"a\":1\xc2\xa0}", "{\"a\":\"\xed\xa0\x80\"}", "{\"a\":\"\xf4\x8f\xbf\xbf\"}",
	} {
		f(s)
	}
}
