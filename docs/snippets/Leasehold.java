// Call the Leasehold agent from Java 11+ over loopback TCP: annotate the Pod with
// leasehold.io/tcp-port: "8686" and the webhook sets LEASEHOLD_URL=http://127.0.0.1:8686
// (the JDK's HttpClient does not speak HTTP over Unix sockets).
//
//   java Leasehold.java LOCK     # acquire with a ttl, check, release
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

public class Leasehold {
    static final HttpClient HTTP = HttpClient.newHttpClient();
    static final String URL = System.getenv().getOrDefault("LEASEHOLD_URL", "http://127.0.0.1:8686");

    /** One call; a non-2xx status (404 not declared, 409 not acquired, 408 wait timed
     *  out, 400 bad input, 503 unavailable) throws with the agent's JSON message. */
    static String call(String method, String path) throws Exception {
        HttpRequest req = HttpRequest.newBuilder(URI.create(URL + path))
                .method(method, HttpRequest.BodyPublishers.noBody()).build();
        HttpResponse<String> resp = HTTP.send(req, HttpResponse.BodyHandlers.ofString());
        if (resp.statusCode() / 100 != 2) {
            throw new IllegalStateException(resp.statusCode() + ": " + resp.body());
        }
        return resp.body();
    }

    /** The value of a number field of the agent's JSON answer (a JSON library does it better). */
    static long number(String json, String field) {
        Matcher m = Pattern.compile("\"" + field + "\":(\\d+)").matcher(json);
        if (!m.find()) throw new IllegalStateException("no " + field + " in " + json);
        return Long.parseLong(m.group(1));
    }

    public static void main(String[] args) throws Exception {
        String lock = args[0];
        long token = number(call("POST", "/v1/locks/" + lock + "/acquire?wait=10s&ttl=1m"), "token");
        boolean held = call("GET", "/v1/locks/" + lock).contains("\"held\":true");
        System.out.println("acquired " + lock + " token=" + token + " held=" + held);
        // ... the critical section; pass the token on to the store you write to ...
        call("POST", "/v1/locks/" + lock + "/release?token=" + token);
        System.out.println("released " + lock);
    }
}
