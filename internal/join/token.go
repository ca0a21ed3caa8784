// Package join lets a node obtain credentials for a cluster's datastore
// from a join token, as k3s and kubeadm do. The embedding agent creates
// the token and serves the join endpoint; a joining agent holding the
// token connects to the endpoint, checks that it is served under the CA
// the token pins, proves that it knows the token's secret, sends a
// certificate request and gets back a client certificate for its node
// name. See docs/agent-datastore.md.
package join

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/podnet/podnet/internal/pki"
)

// tokenPrefix marks (and versions) a podnet join token.
const tokenPrefix = "pn1:"

// secretBytes is the size of a token's random secret.
const secretBytes = 32

// Token is a join token: a secret that authenticates the joining node and
// the hash of the CA that authenticates the cluster. Its text form is
//
//	pn1:<secret, 64 hex>::sha256:<SHA-256 of the CA certificate's DER, 64 hex>
type Token struct {
	// Secret is the shared secret, hex.
	Secret string
	// CAHash pins the cluster CA: "sha256:" and 64 hex digits.
	CAHash string
}

// NewToken is a token with a fresh random secret for ca.
func NewToken(ca *pki.CA) (Token, error) {
	b := make([]byte, secretBytes)
	if _, err := rand.Read(b); err != nil {
		return Token{}, fmt.Errorf("join token: %w", err)
	}
	return Token{Secret: hex.EncodeToString(b), CAHash: ca.Hash()}, nil
}

// String is the token's text form.
func (t Token) String() string { return tokenPrefix + t.Secret + "::" + t.CAHash }

// ParseToken parses a token's text form (surrounding white space is
// ignored). Errors never repeat the secret.
func ParseToken(s string) (Token, error) {
	s = strings.TrimSpace(s)
	rest, ok := strings.CutPrefix(s, tokenPrefix)
	if !ok {
		return Token{}, errors.New("join token: not a podnet join token (want pn1:<secret>::sha256:<CA hash>)")
	}
	secret, hash, ok := strings.Cut(rest, "::")
	if !ok {
		return Token{}, errors.New("join token: no CA hash (want pn1:<secret>::sha256:<CA hash>)")
	}
	if !isHex(secret, 2*secretBytes) {
		return Token{}, fmt.Errorf("join token: the secret is not %d hex digits", 2*secretBytes)
	}
	sum, ok := strings.CutPrefix(hash, "sha256:")
	if !ok || !isHex(sum, 2*sha256.Size) {
		return Token{}, errors.New("join token: the CA hash is not sha256:<64 hex digits>")
	}
	return Token{Secret: secret, CAHash: "sha256:" + strings.ToLower(sum)}, nil
}

// ReadToken reads and parses a token file.
func ReadToken(path string) (Token, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Token{}, fmt.Errorf("join token: %w", err)
	}
	t, err := ParseToken(string(b))
	if err != nil {
		return Token{}, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

// LoadOrCreateToken reads the token file at path when it exists and pins
// ca, else writes a new token for ca there with mode 0600.
func LoadOrCreateToken(path string, ca *pki.CA) (Token, error) {
	t, err := ReadToken(path)
	if err == nil && t.CAHash == ca.Hash() {
		return t, nil
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return Token{}, err
	}
	if t, err = NewToken(ca); err != nil {
		return Token{}, err
	}
	if err := pki.WriteFile(path, []byte(t.String()+"\n"), 0o600); err != nil {
		return Token{}, fmt.Errorf("join token: %w", err)
	}
	return t, nil
}

// secretMatches compares a presented secret with the token's in constant
// time (both hashed first, so not even their lengths leak).
func (t Token) secretMatches(presented string) bool {
	a, b := sha256.Sum256([]byte(presented)), sha256.Sum256([]byte(t.Secret))
	return subtle.ConstantTimeCompare(a[:], b[:]) == 1
}

func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}
