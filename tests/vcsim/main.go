// Command vcsim serves an in-memory vCenter (or ESXi) for vmctl's tests, using the simulator
// library that Debian's golang-github-vmware-govmomi-dev ships without a main program.
//
// It listens on 127.0.0.1 (port 0 picks a free one), prints one line
//
//	VCSIM-READY url=https://127.0.0.1:PORT/sdk
//
// on stdout once it accepts connections, and runs until SIGINT/SIGTERM or, with -stdin-watch,
// until its standard input reaches end of file (so it dies with the process that started it).
// The password is read from a file or the VCSIM_PASSWORD environment variable, never from argv.
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"io/ioutil"
	"log"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vmware/govmomi/simulator"
)

func main() {
	kind := flag.String("model", "vpx", "vpx (a vCenter) or esx (a standalone ESXi host)")
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on (port 0: a free port)")
	datacenters := flag.Int("dc", 1, "datacenters (vpx only)")
	clusters := flag.Int("cluster", 1, "clusters per datacenter (vpx only)")
	clusterHosts := flag.Int("host", 3, "hosts per cluster (vpx only)")
	standalone := flag.Int("standalone-host", 1, "standalone hosts per datacenter (vpx only)")
	datastores := flag.Int("ds", 1, "local datastores")
	machines := flag.Int("vm", 2, "virtual machines per resource pool")
	autostart := flag.Bool("autostart", true, "power on the model's virtual machines")
	username := flag.String("username", "", "the only user accepted (default: any user and password)")
	passwordFile := flag.String("password-file", "", "file holding the password for -username (else $VCSIM_PASSWORD)")
	certOut := flag.String("cert-out", "", "write the server's self-signed certificate (PEM) to this file")
	plain := flag.Bool("no-tls", false, "serve plain http instead of https")
	stdinWatch := flag.Bool("stdin-watch", false, "exit when standard input is closed")
	trace := flag.Bool("trace", false, "write SOAP traffic to stderr")
	delays := flag.String("delay", "", "slow methods down: METHOD=MILLISECONDS[,METHOD=MILLISECONDS...]")
	flag.Parse()

	var model *simulator.Model
	switch *kind {
	case "vpx":
		model = simulator.VPX()
		model.Datacenter = *datacenters
		model.Cluster = *clusters
		model.ClusterHost = *clusterHosts
		model.Host = *standalone
	case "esx":
		model = simulator.ESX()
	default:
		log.Fatalf("-model must be vpx or esx, not %q", *kind)
	}
	model.Datastore = *datastores
	model.Machine = *machines
	model.Autostart = *autostart
	simulator.Trace = *trace
	methodDelay, err := parseDelays(*delays)
	if err != nil {
		log.Fatal(err)
	}
	model.DelayConfig.MethodDelay = methodDelay

	if err := model.Create(); err != nil {
		log.Fatalf("building the inventory: %v", err)
	}
	defer model.Remove() // the datastores' temporary directories

	listenURL := &url.URL{Host: *listen}
	if *username != "" {
		password, err := readPassword(*passwordFile)
		if err != nil {
			model.Remove()
			log.Fatal(err)
		}
		listenURL.User = url.UserPassword(*username, password)
	}
	model.Service.Listen = listenURL

	if !*plain {
		cert, pemBytes, err := selfSignedCertificate()
		if err != nil {
			model.Remove()
			log.Fatalf("making a certificate: %v", err)
		}
		if *certOut != "" {
			if err := ioutil.WriteFile(*certOut, pemBytes, 0o600); err != nil {
				model.Remove()
				log.Fatalf("writing %s: %v", *certOut, err)
			}
		}
		model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}

	server := model.Service.NewServer()
	public := *server.URL
	public.User = nil // never print the credentials
	fmt.Printf("VCSIM-READY url=%s\n", public.String())
	os.Stdout.Sync()

	done := make(chan string, 2)
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	go func() { done <- (<-signals).String() }()
	if *stdinWatch {
		go func() {
			_, _ = io.Copy(ioutil.Discard, os.Stdin)
			done <- "end of standard input"
		}()
	}
	reason := <-done
	log.Printf("vcsim: stopping (%s)", reason)
	server.Close()
}

func parseDelays(text string) (map[string]int, error) {
	delays := map[string]int{}
	for _, item := range strings.Split(text, ",") {
		if item == "" {
			continue
		}
		parts := strings.SplitN(item, "=", 2)
		if len(parts) != 2 {
			return nil, fmt.Errorf("-delay: %q is not METHOD=MILLISECONDS", item)
		}
		ms, err := strconv.Atoi(parts[1])
		if err != nil || ms < 0 {
			return nil, fmt.Errorf("-delay: %q is not a number of milliseconds", parts[1])
		}
		delays[parts[0]] = ms
	}
	return delays, nil
}

func readPassword(file string) (string, error) {
	if file == "" {
		password, ok := os.LookupEnv("VCSIM_PASSWORD")
		if !ok {
			return "", fmt.Errorf("-username needs -password-file or $VCSIM_PASSWORD")
		}
		return password, nil
	}
	data, err := ioutil.ReadFile(file)
	if err != nil {
		return "", err
	}
	return strings.TrimRight(string(data), "\r\n"), nil
}

// selfSignedCertificate makes a P-256 certificate for 127.0.0.1, ::1 and localhost that is its
// own CA, so a client can verify the server by trusting exactly this certificate.
func selfSignedCertificate() (tls.Certificate, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	publicDER, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	keyID := sha1.Sum(publicDER)
	now := time.Now()
	template := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "vcsim for vmctl tests", Organization: []string{"vmctl"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(7 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		SubjectKeyId:          keyID[:],
		AuthorityKeyId:        keyID[:],
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pemBytes, nil
}
