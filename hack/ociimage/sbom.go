package main

import (
	"crypto/sha256"
	"debug/buildinfo"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"time"
)

// The SBOM is an SPDX 2.3 JSON document written from the Go build information of the
// image's binaries (what `go version -m` prints, read with debug/buildinfo): one package
// per binary and platform, one per Go module it links, one for the Go standard library.
// Licenses are NOASSERTION: the build information does not carry them, and guessing
// from file names would put claims in the SBOM that nobody checked.

type spdxDoc struct {
	SPDXVersion       string             `json:"spdxVersion"`
	DataLicense       string             `json:"dataLicense"`
	SPDXID            string             `json:"SPDXID"`
	Name              string             `json:"name"`
	DocumentNamespace string             `json:"documentNamespace"`
	CreationInfo      spdxCreation       `json:"creationInfo"`
	Packages          []spdxPackage      `json:"packages"`
	Relationships     []spdxRelationship `json:"relationships"`
}

type spdxCreation struct {
	Created  string   `json:"created"`
	Creators []string `json:"creators"`
}

type spdxPackage struct {
	Name             string         `json:"name"`
	SPDXID           string         `json:"SPDXID"`
	VersionInfo      string         `json:"versionInfo,omitempty"`
	DownloadLocation string         `json:"downloadLocation"`
	FilesAnalyzed    bool           `json:"filesAnalyzed"`
	LicenseConcluded string         `json:"licenseConcluded"`
	LicenseDeclared  string         `json:"licenseDeclared"`
	CopyrightText    string         `json:"copyrightText"`
	PrimaryPurpose   string         `json:"primaryPackagePurpose,omitempty"`
	Checksums        []spdxChecksum `json:"checksums,omitempty"`
	ExternalRefs     []spdxRef      `json:"externalRefs,omitempty"`
}

type spdxChecksum struct {
	Algorithm string `json:"algorithm"`
	Value     string `json:"checksumValue"`
}

type spdxRef struct {
	Category string `json:"referenceCategory"`
	Type     string `json:"referenceType"`
	Locator  string `json:"referenceLocator"`
}

type spdxRelationship struct {
	Element string `json:"spdxElementId"`
	Type    string `json:"relationshipType"`
	Related string `json:"relatedSpdxElement"`
}

// sbomBinary is one file of the image that may be a Go binary.
type sbomBinary struct {
	platform string // linux/amd64
	path     string // in the image
	data     []byte
}

var spdxIDUnsafe = regexp.MustCompile(`[^A-Za-z0-9.-]+`)

func spdxID(parts ...string) string {
	return "SPDXRef-" + strings.Trim(spdxIDUnsafe.ReplaceAllString(strings.Join(parts, "-"), "-"), "-")
}

func purl(path, version string) string {
	return "pkg:golang/" + path + "@" + version
}

// writeSBOM returns the SPDX document of the image named name (repository:tag) whose
// index has the digest indexDigest. Files that are not Go binaries are left out.
func writeSBOM(name, indexDigest, version string, created time.Time, bins []sbomBinary) ([]byte, error) {
	imageID := spdxID("Image")
	doc := spdxDoc{
		SPDXVersion:       "SPDX-2.3",
		DataLicense:       "CC0-1.0",
		SPDXID:            "SPDXRef-DOCUMENT",
		Name:              name,
		DocumentNamespace: "https://github.com/leasehold/leasehold/spdx/" + strings.ReplaceAll(name, ":", "/") + "/" + indexDigest,
		CreationInfo:      spdxCreation{Created: created.UTC().Format(time.RFC3339), Creators: []string{"Tool: leasehold-ociimage"}},
		Packages: []spdxPackage{{
			Name: name, SPDXID: imageID, VersionInfo: version, DownloadLocation: "NOASSERTION",
			LicenseConcluded: "NOASSERTION", LicenseDeclared: "NOASSERTION", CopyrightText: "NOASSERTION",
			PrimaryPurpose: "CONTAINER",
			Checksums:      []spdxChecksum{{Algorithm: "SHA256", Value: strings.TrimPrefix(indexDigest, "sha256:")}},
		}},
		Relationships: []spdxRelationship{{Element: "SPDXRef-DOCUMENT", Type: "DESCRIBES", Related: imageID}},
	}
	modules := map[string]spdxPackage{} // by SPDXID, shared by every binary that links it
	sort.Slice(bins, func(i, j int) bool {
		return bins[i].platform+bins[i].path < bins[j].platform+bins[j].path
	})
	for _, b := range bins {
		bi, err := buildinfo.Read(strings.NewReader(string(b.data)))
		if err != nil {
			continue // not a Go binary (busybox, a script)
		}
		sum := sha256.Sum256(b.data)
		binID := spdxID("File", b.platform, b.path)
		doc.Packages = append(doc.Packages, spdxPackage{
			Name: b.path + " (" + b.platform + ")", SPDXID: binID, VersionInfo: version, DownloadLocation: "NOASSERTION",
			LicenseConcluded: "NOASSERTION", LicenseDeclared: "NOASSERTION", CopyrightText: "NOASSERTION",
			PrimaryPurpose: "APPLICATION",
			Checksums:      []spdxChecksum{{Algorithm: "SHA256", Value: hex.EncodeToString(sum[:])}},
		})
		doc.Relationships = append(doc.Relationships, spdxRelationship{Element: imageID, Type: "CONTAINS", Related: binID})
		type mod struct{ path, version string }
		mods := []mod{{"stdlib", strings.TrimPrefix(bi.GoVersion, "go")}}
		if bi.Main.Path != "" {
			v := bi.Main.Version
			if v == "" || v == "(devel)" {
				v = version
			}
			mods = append(mods, mod{bi.Main.Path, v})
		}
		for _, d := range bi.Deps {
			if d.Replace != nil {
				d = d.Replace
			}
			mods = append(mods, mod{d.Path, d.Version})
		}
		for _, m := range mods {
			id := spdxID("Go", m.path, m.version)
			if _, ok := modules[id]; !ok {
				modules[id] = spdxPackage{
					Name: m.path, SPDXID: id, VersionInfo: m.version, DownloadLocation: "NOASSERTION",
					LicenseConcluded: "NOASSERTION", LicenseDeclared: "NOASSERTION", CopyrightText: "NOASSERTION",
					PrimaryPurpose: "LIBRARY",
					ExternalRefs:   []spdxRef{{Category: "PACKAGE-MANAGER", Type: "purl", Locator: purl(m.path, m.version)}},
				}
			}
			doc.Relationships = append(doc.Relationships, spdxRelationship{Element: binID, Type: "DEPENDS_ON", Related: id})
		}
	}
	ids := make([]string, 0, len(modules))
	for id := range modules {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		doc.Packages = append(doc.Packages, modules[id])
	}
	out, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("marshal the SBOM: %w", err)
	}
	return append(out, '\n'), nil
}

// jsonMarshal is json.Marshal: encoding/json sorts map keys, so the bytes are stable.
func jsonMarshal(v any) ([]byte, error) { return json.Marshal(v) }
