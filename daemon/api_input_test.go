package daemon

import (
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ksaga/ksaga/message"
)

func TestCheckID(t *testing.T) {
	for _, tc := range []struct {
		id   string
		want string // "" for accepted
	}{
		{"o-1", ""},
		{"order:2026-03-01@eu.shop_7", ""},
		{"a.b", ""},
		{"A", ""},
		{strings.Repeat("x", 128), ""},
		{"", "the saga id is empty"},
		{strings.Repeat("x", 129), "the saga id is 129 bytes long, the limit is 128"},
		{".hidden", "a leading '.' at byte 0"},
		{"..", "a leading '.' at byte 0"},
		{"a\x00b", "U+0000 (NUL) at byte 1"},
		{"a\r\nb", "U+000D (CR) at byte 1"},
		{"a\nb", "U+000A (LF) at byte 1"},
		{"\x1b[31mred", "U+001B (ESC) at byte 0"},
		{"a\tb", "U+0009 (TAB) at byte 1"},
		{"a\x7f", "U+007F (DEL) at byte 1"},
		{"p-\u202egnp.exe", "U+202E at byte 2"},
		{"a/b", "'/' (%2F) at byte 1"},
		{"a%2Fb", "'%' at byte 1"},
		{"a b", "' ' at byte 1"},
		{"café", "U+00E9 at byte 3"},
		{"\xff", "the byte 0xFF (not UTF-8) at byte 0"},
	} {
		t.Run(tc.id, func(t *testing.T) {
			err := checkID(tc.id)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("checkID(%q): got %v, want nil", tc.id, err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("checkID(%q): got %v, want an error containing %q", tc.id, err, tc.want)
			case err != nil && !strings.HasSuffix(err.Error(), idRule):
				t.Errorf("checkID(%q): got %q, want it to end with the rule", tc.id, err)
			}
		})
	}
}

// An order-like data type: nested structs, slices, a map, a pointer, an
// embedded struct, a tagged-out field and a type that decodes itself.
type (
	testItem struct {
		SKU string `json:"sku"`
		Qty int    `json:"qty"`
	}
	testAddress struct {
		Country string `json:"country"`
		City    string
	}
	testMeta struct {
		Source string `json:"source,omitempty"`
	}
	testOrder struct {
		testMeta
		OrderID string                 `json:"order_id"`
		Items   []testItem             `json:"items"`
		ShipTo  *testAddress           `json:"ship_to"`
		Tags    map[string]testAddress `json:"tags"`
		At      time.Time              `json:"at"`
		Any     any                    `json:"any"`
		Secret  string                 `json:"-"`
		hidden  string
	}
)

func TestCheckFieldNames(t *testing.T) {
	typ := reflect.TypeFor[*testOrder]()
	for _, tc := range []struct {
		name, body string
		want       string // "" for accepted
	}{
		{"as the type spells them", `{"order_id":"o-1","items":[{"sku":"s","qty":1}],"ship_to":{"country":"DE","City":"B"}}`, ""},
		{"embedded", `{"source":"web","order_id":"o-1"}`, ""},
		{"unknown keys are the decoder's", `{"colour":"red","Secret":"x","hidden":"y"}`, ""},
		{"map keys are data", `{"tags":{"HOME":{"country":"DE"}}}`, ""},
		{"under any, anything", `{"any":{"ORDER_ID":1}}`, ""},
		{"a type that decodes itself", `{"at":"2026-03-01T00:00:00Z"}`, ""},
		{"a field in capitals", `{"ORDER_ID":"o-1"}`, `the body has the key "ORDER_ID" where "order_id" is expected: field names are case-sensitive; write "order_id"`},
		{"a Go name for a tagged field", `{"OrderID":"o-1"}`, ``},
		{"an untagged field in lower case", `{"ship_to":{"city":"B"}}`, `the key "ship_to.city" where "ship_to.City" is expected`},
		{"in a slice", `{"items":[{"sku":"a","qty":1},{"SKU":"b"}]}`, `the key "items[].SKU" where "items[].sku" is expected`},
		{"under a map", `{"tags":{"home":{"Country":"DE"}}}`, `the key "tags.home.Country" where "tags.home.country" is expected`},
		{"embedded, in capitals", `{"Source":"web"}`, `the key "Source" where "source" is expected`},
		{"a Kelvin sign", "{\"items\":[{\"s\u212au\":\"a\"}]}", `where "items[].sku" is expected`},
		{"an escaped key", `{"ORDER\u005fID":"o-1"}`, `the key "ORDER_ID"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			value, err := message.Canonical([]byte(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			err = checkFieldNames(value, typ)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("got %v, want nil", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
	if err := checkFieldNames([]byte(`{"ORDER_ID":1}`), nil); err != nil {
		t.Errorf("a nil type: got %v, want nil", err)
	}
}

func TestCheckContentType(t *testing.T) {
	for _, tc := range []struct {
		ct     string
		length int64
		ok     bool
	}{
		{"application/json", 10, true},
		{"application/json; charset=utf-8", 10, true},
		{"Application/JSON;charset=UTF-8", 10, true},
		{"", 0, true},
		{"", 10, false},
		{"", -1, false},
		{"text/plain", 10, false},
		{"application/x-www-form-urlencoded", 10, false},
		{"multipart/form-data; boundary=x", 10, false},
		{"application/json; charset=latin1", 10, false},
		{"application/jsonx", 10, false},
		{"application/json;;", 10, false},
	} {
		r, _ := http.NewRequest(http.MethodPost, "/", nil)
		r.ContentLength = tc.length
		if tc.ct != "" {
			r.Header.Set("Content-Type", tc.ct)
		}
		if err := checkContentType(r); (err == nil) != tc.ok {
			t.Errorf("Content-Type %q, length %d: got %v, want ok %v", tc.ct, tc.length, err, tc.ok)
		}
	}
}
