// A small net/http client: the binary whose build info, object layouts (DWARF) and function
// addresses the tests of tracer/src/gohttp read, and the ground truth for the chain of fields
// from a *persistConn to its socket's descriptor.
//
// It serves HTTP and HTTPS on loopback, makes one request to each through its own Transport,
// and once each connection is back in its Transport's idle pool prints, per connection, the
// address of the *persistConn (read with reflect from the Transport's unexported idle pool) and
// the client socket's descriptor (from the connection itself):
//
//	conn <plain|tls> <persistConn address, hex> <fd>
//	ready
//
// then waits until its standard input is closed.
package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"os"
	"reflect"
	"time"
)

func main() {
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello") })
	plain := httptest.NewServer(handler)
	defer plain.Close()
	secure := httptest.NewTLSServer(handler)
	defer secure.Close()

	request("plain", plain.URL, &http.Transport{})
	request("tls", secure.URL, &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}})
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
}

// request fetches url through tr and prints the idle connection it leaves behind.
func request(kind, url string, tr *http.Transport) {
	fd := -1
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		conn := info.Conn
		if tc, ok := conn.(*tls.Conn); ok {
			conn = tc.NetConn()
		}
		raw, err := conn.(*net.TCPConn).SyscallConn()
		check(err)
		check(raw.Control(func(s uintptr) { fd = int(s) }))
	}}
	req, err := http.NewRequest("GET", url, nil)
	check(err)
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
	resp, err := (&http.Client{Transport: tr}).Do(req)
	check(err)
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()

	// The read loop returns the connection to the pool on its own goroutine: wait for it.
	var conns []uintptr
	for try := 0; try < 200 && len(conns) == 0; try++ {
		time.Sleep(10 * time.Millisecond)
		conns = idle(tr)
	}
	if len(conns) != 1 {
		check(fmt.Errorf("%s: %d idle connections, want 1", kind, len(conns)))
	}
	fmt.Printf("conn %s %x %d\n", kind, conns[0], fd)
}

// idle lists the Transport's idle connections: its idleConn field is a
// map[connectMethodKey][]*persistConn; reflect may read unexported fields, and Pointer gives
// each one's address. Reading the map races with the Transport only if it is in use.
func idle(tr *http.Transport) []uintptr {
	var conns []uintptr
	for it := reflect.ValueOf(tr).Elem().FieldByName("idleConn").MapRange(); it.Next(); {
		for i := 0; i < it.Value().Len(); i++ {
			conns = append(conns, it.Value().Index(i).Pointer())
		}
	}
	return conns
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
