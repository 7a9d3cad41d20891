// Checks infaas's Avro wire format against the Java reference implementation.
//   java -cp 'JARS/*' AvroCheck.java fingerprint SCHEMA.avsc...   prints "<hex fingerprint> <canonical form>"
//   java -cp 'JARS/*' AvroCheck.java decode SCHEMA_DIR NAME MSG   decodes a single-object-encoded message, prints JSON
// SCHEMA_DIR's .avsc files are parsed together, so cross-file references resolve as in Java projects.
import java.nio.file.*;
import java.util.*;
import org.apache.avro.*;
import org.apache.avro.generic.*;
import org.apache.avro.message.*;

public class AvroCheck {
  static Map<String, Schema> parseDir(Path dir) throws Exception {
    List<Path> files = new ArrayList<>();
    try (var stream = Files.list(dir)) { stream.filter(p -> p.toString().endsWith(".avsc")).sorted().forEach(files::add); }
    // Parse in dependency order: retry files whose referenced types are not defined yet.
    Map<String, Schema> types = new HashMap<>();
    Deque<Path> pending = new ArrayDeque<>(files);
    int stall = 0;
    while (!pending.isEmpty() && stall <= pending.size()) {
      Path p = pending.poll();
      Schema.Parser parser = new Schema.Parser();
      parser.addTypes(types.values());
      try {
        Schema s = parser.parse(p.toFile());
        types.putAll(parser.getTypes());
        types.put(s.getFullName(), s);
        stall = 0;
      } catch (AvroRuntimeException e) { pending.add(p); stall++; }
    }
    if (!pending.isEmpty()) throw new RuntimeException("unresolved schemas: " + pending);
    return types;
  }

  public static void main(String[] args) throws Exception {
    if (args[0].equals("fingerprint")) {
      Map<String, Schema> types = parseDir(Paths.get(args[1]));
      for (int i = 2; i < args.length; i++) {
        Schema s = types.get(args[i]);
        long fp = SchemaNormalization.parsingFingerprint64(s);
        System.out.println(String.format("%016x", fp) + " " + SchemaNormalization.toParsingForm(s));
      }
    } else if (args[0].equals("decode")) {
      Map<String, Schema> types = parseDir(Paths.get(args[1]));
      Schema s = types.get(args[2]);
      BinaryMessageDecoder<GenericRecord> decoder = new BinaryMessageDecoder<>(GenericData.get(), s);
      GenericRecord rec = decoder.decode(Files.readAllBytes(Paths.get(args[3])));
      System.out.println(rec.toString());
    }
  }
}
