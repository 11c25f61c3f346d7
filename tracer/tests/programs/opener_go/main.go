// A Go program whose code addresses tests/symbolize.rs symbolizes: it prints the entry
// addresses of a few functions, then waits until its stdin closes. net/http and a few more
// packages make the binary the size of a real service's (about 8 MB), for the timing of the
// first symbolization. The markers LINE:<name> let the test find the lines it expects.
package main

import (
	"bufio"
	"database/sql"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"html/template"
	"net/http"
	"net/rpc"
	"os"
	"reflect"
)

//go:noinline
func openDB(n int) int { // LINE:main.openDB
	return n*3 + 1
}

//go:noinline
func leakConnections(n int) int { // LINE:main.leakConnections
	return n - 1
}

func show(name string, f interface{}) {
	fmt.Printf("%s %#x\n", name, reflect.ValueOf(f).Pointer())
}

func main() {
	r := leakConnections(openDB(4))
	show("main.openDB", openDB)
	show("main.leakConnections", leakConnections)
	show("main.main", main)
	show("net/http.Get", http.Get)
	show("database/sql.Open", sql.Open)
	show("encoding/json.Marshal", json.Marshal)
	show("encoding/xml.Marshal", xml.Marshal)
	show("html/template.New", template.New)
	show("net/rpc.Dial", rpc.Dial)
	fmt.Printf("ready %d\n", r)
	in := bufio.NewReader(os.Stdin)
	for {
		if _, err := in.ReadString('\n'); err != nil {
			return
		}
	}
}
