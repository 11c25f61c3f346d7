// A Go program whose code addresses tests/symbolize.rs symbolizes: it prints the entry
// addresses of a few functions, then waits until its stdin closes. net/http, crypto/tls, the
// Go parser and type checker and a few more packages, each used, make the binary the size of a
// real service's (over 10 MB), for the timing of the first symbolization (`cargo xtask
// bench` refuses a smaller one). The markers LINE:<name> let the test find the lines it
// expects.
package main

import (
	"archive/zip"
	"bufio"
	"compress/gzip"
	"crypto/tls"
	"crypto/x509"
	"database/sql"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"go/ast"
	"go/importer"
	"go/parser"
	"go/token"
	"go/types"
	"html/template"
	"image/png"
	"net/http"
	"net/rpc"
	"os"
	"reflect"
	"regexp"
)

//go:noinline
func openDB(n int) int { // LINE:main.openDB
	return n*3 + 1
}

//go:noinline
func leakConnections(n int) int { // LINE:main.leakConnections
	return n - 1
}

// exercise uses the big packages for real, so that the linker keeps them; it runs only when
// the program is given an argument (never in the tests or the bench).
func exercise(src string) error {
	fset := token.NewFileSet()
	file, err := parser.ParseFile(fset, "x.go", src, parser.ParseComments)
	if err != nil {
		return err
	}
	info := &types.Info{Types: map[ast.Expr]types.TypeAndValue{}, Defs: map[*ast.Ident]types.Object{}}
	conf := types.Config{Importer: importer.Default()}
	if _, err := conf.Check("x", fset, []*ast.File{file}, info); err != nil {
		return err
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		return err
	}
	srv := &http.Server{Addr: src, TLSConfig: &tls.Config{RootCAs: pool}}
	go srv.ListenAndServeTLS(src, src)
	resp, err := http.Get("https://" + src)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var v map[string]interface{}
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		return err
	}
	t := template.Must(template.New("x").Parse(src))
	if err := t.Execute(os.Stdout, v); err != nil {
		return err
	}
	zr, err := zip.OpenReader(src)
	if err != nil {
		return err
	}
	defer zr.Close()
	gz, err := gzip.NewReader(os.Stdin)
	if err != nil {
		return err
	}
	if _, err := png.Decode(gz); err != nil {
		return err
	}
	db, err := sql.Open(src, src)
	if err != nil {
		return err
	}
	_, err = db.Query(regexp.MustCompile(src).String())
	return err
}

func show(name string, f interface{}) {
	fmt.Printf("%s %#x\n", name, reflect.ValueOf(f).Pointer())
}

func main() {
	if len(os.Args) > 1 {
		fmt.Println(exercise(os.Args[1]))
		return
	}
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
	show("crypto/tls.Dial", tls.Dial)
	show("crypto/x509.ParseCertificate", x509.ParseCertificate)
	show("go/parser.ParseFile", parser.ParseFile)
	show("go/types.NewPackage", types.NewPackage)
	show("go/token.NewFileSet", token.NewFileSet)
	show("compress/gzip.NewReader", gzip.NewReader)
	show("archive/zip.OpenReader", zip.OpenReader)
	show("image/png.Decode", png.Decode)
	show("regexp.Compile", regexp.Compile)
	fmt.Printf("ready %d\n", r)
	in := bufio.NewReader(os.Stdin)
	for {
		if _, err := in.ReadString('\n'); err != nil {
			return
		}
	}
}
