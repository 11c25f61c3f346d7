// A small net/http client: the binary whose build info, object layouts (DWARF) and function
// addresses the tests of tracer/src/gohttp read. Given a URL it fetches it once, over plain TCP
// or TLS, so that the client request path and crypto/tls are linked in as in real programs.
package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Println("usage: gohttp URL")
		return
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	resp, err := client.Get(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	n, _ := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	fmt.Println(resp.Status, n)
}
